"""The one error the data side raises for a setup the user must change (a path, a config value, a build to run)."""


class DataSetupError(ValueError):
  """The configured data cannot be read as configured; str() names what to change. The trainer prints it as is,
  without a traceback: it is the user's next step, not a bug."""
