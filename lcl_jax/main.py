"""Entry point: flags -> jax.distributed (multi-host) -> train.run.

  python -m lcl_jax.main --config=configs/vitl14_laion_mmc4.py --workdir=gs://BUCKET/run [--config.x=y ...]
  python -m lcl_jax.main --config=configs/vitl14_laion_mmc4.py:runlocal --workdir=/tmp/lcl
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags


def _multi_host_environment() -> bool:
  """True where jax.distributed.initialize() can configure itself: multi-host TPU VMs, SLURM jobs of >1 task."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


def initialize_distributed():
  import jax
  if _COORDINATOR.value:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      raise app.UsageError("--coordinator_address needs --num_processes and --process_id.")
    # CPU devices across processes need a collectives implementation (tests, CPU clusters); GPUs and TPUs
    # ignore this. It must be set before any backend starts, so nothing here may ask jax for devices first.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # No local_device_ids: on SLURM with one task per node every GPU of the node stays visible.
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               heartbeat_timeout_seconds=_HEARTBEAT.value)
  elif _multi_host_environment():
    jax.distributed.initialize(heartbeat_timeout_seconds=_HEARTBEAT.value)


def quiet_storage_logs():
  """Orbax logs every save in a dozen INFO lines and every failure with a traceback per thread, and after a failed
  restore or save each of its other pending reads or writes fails too, reported as a traceback of its own (hundreds;
  "Event loop is closed", "exception was never retrieved"). clu's metric writer thread logs its failure (a full disk
  under the event file) with a traceback too, then re-raises it in the loop. Our own error line gives the cause and
  what to do, so unless --verbosity >= 1: their warnings and errors stay as one line each, the echoes are dropped."""
  import logging as std_logging
  import sys
  import traceback

  def from_orbax(exc_info) -> bool:
    return "/orbax/" in "".join(traceback.format_exception(*exc_info)) or "Event loop is closed" in str(exc_info[1])

  class _Filter(std_logging.Filter):
    def filter(self, record):
      if logging.get_verbosity() >= 1:
        return True
      if record.name == "asyncio" and record.exc_info and from_orbax(record.exc_info):
        return False
      if record.pathname.endswith("/clu/asynclib.py"):
        record.exc_info, record.exc_text = None, None
        return True
      if "/orbax/" not in record.pathname:
        return True
      record.exc_info, record.exc_text = None, None
      return record.levelno >= std_logging.WARNING
  logging.get_absl_handler().addFilter(_Filter())

  default_hook = sys.unraisablehook

  def _hook(unraisable):
    exc_info = (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    if logging.get_verbosity() >= 1 or not from_orbax(exc_info):
      default_hook(unraisable)
  sys.unraisablehook = _hook


def exit_with(error: BaseException, code: int):
  """The one line that says what happened and what to do, then exit (traceback only with --verbosity >= 1).

  os._exit: after a failed save, orbax's pending asyncio tasks print a traceback each at interpreter shutdown;
  nothing is left to write at this point (checkpoints are closed, logs flushed).
  """
  import sys
  import traceback
  if logging.get_verbosity() >= 1:
    traceback.print_exception(error)
  logging.flush()
  print(f"lcl_jax: {error}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(code)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  quiet_storage_logs()
  # TensorFlow only feeds data: it must not take accelerator memory from JAX.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU") if tf.config.list_physical_devices("TPU") else None

  initialize_distributed()
  import jax
  from data_pipelines.errors import DataSetupError
  from lcl_jax import checkpoint, config_checks, train, workdir_lock
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)  # one process speaks for the run
  try:
    train.run(_CONFIG.value, _WORKDIR.value)
  except (config_checks.ConfigError, DataSetupError) as e:
    exit_with(e, 2)
  except (checkpoint.CheckpointError, workdir_lock.WorkdirLocked, train.TooManyNonFiniteSteps,
          train.MetricsWriteError) as e:
    exit_with(e, 1)


# Keys that were renamed or replaced: an old command line gets the new key, not just the list of known ones.
RENAMED_KEYS = {
    "loss.lm_loss_chunks": "config.loss.lm_block_size (the LM head runs on target positions only, in blocks of "
                           "this many positions; any positive value works, it need not divide the sequence)",
}


def unknown_override(argv) -> str | None:
  """The first `--config.a.b=v` whose key the config does not have, as a message; None if all exist."""
  import importlib.util
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_lcl_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for a in argv:
    if not a.startswith("--config."):
      continue
    keys = a[len("--config."):].split("=", 1)[0].split(".")
    node = config
    for depth, key in enumerate(keys):
      if not hasattr(node, "keys") or key not in node:
        known = sorted(node.keys()) if hasattr(node, "keys") else []
        where = "config" + "".join(f".{k}" for k in keys[:depth])
        renamed = RENAMED_KEYS.get(".".join(keys[:depth + 1]))
        if renamed:
          return f"Unknown config key in {a!r}: {where}.{key} was replaced by {renamed}."
        return f"Unknown config key in {a!r}: {where} has no {key!r}. Known keys there: {known}."
      node = node[key]
  return None


if __name__ == "__main__":
  import sys
  # Flags exist only when this module runs as the program: importing it (tests) must not claim flag names.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, path[:runlocal].", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and TensorBoard logs (local or gs://).")
  _COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host without "
                                     "auto-detection; TPU VMs and SLURM are detected from the environment).")
  _NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
  _PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
  _HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 100, "Seconds without a heartbeat after which the other "
                                    "processes give a lost host up and exit (jax.distributed; multi-host only).")
  flags.mark_flags_as_required(["config", "workdir"])
  try:
    app.run(main)
  except (AttributeError, KeyError):
    message = unknown_override(sys.argv)
    if message is None:
      raise
    print(f"lcl_jax: {message}", file=sys.stderr)
    sys.exit(2)
