"""XLA_FLAGS for a subprocess with its own count of fake CPU devices: the suite's other XLA flags (conftest.py's
compile-time switches) stay, so the subprocess compiles as the tests' own process does."""
import os

DEVICE_COUNT = "--xla_force_host_platform_device_count"


def with_devices(devices: int | None) -> str:
  """The current XLA_FLAGS with `devices` fake CPU devices (None: the machine's one)."""
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT)]
  return " ".join(kept + ([f"{DEVICE_COUNT}={devices}"] if devices else []))
