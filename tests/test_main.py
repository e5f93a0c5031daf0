"""`python -m lcl_jax.main` on the demo corpus, one process: the faults that end a run, each in one line. A second
trainer on a workdir is refused; a full disk stops the run at the failed save, the last good checkpoint intact; bad
configs fail at start-up. (SIGTERM, kill -9 and a corrupt checkpoint, each resumed to the parameters and metrics of an
uninterrupted run: tests/test_multihost.py, which runs the same entry point on two processes.)"""
import contextlib
import os
import re
import resource
import subprocess
import sys

from lcl_jax import main
from tests import xla_flags


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
ARGS = ["--config=configs/vitb16_mmc4.py:runlocal", f"--config.optim.total_steps={STEPS}",
        "--config.log_every=1", "--config.ckpt.every_steps=2", "--config.evals.zeroshot_digits.every_steps=0",
        "--config.evals.retrieval_digits.every_steps=0", "--config.evals.linear_probe_digits.every_steps=0",
        "--config.evals.attention_probe_digits.every_steps=0", "--config.evals.perplexity_digits.every_steps=0"]


def _env(demo_dir):
  env = dict(os.environ, XLA_FLAGS=xla_flags.with_devices(None))  # one CPU device, as a laptop
  env["LCL_DEMO_DIR"] = str(demo_dir)
  return env


def _main(workdir, demo_dir, extra=(), preexec_fn=None):
  cmd = [sys.executable, "-m", "lcl_jax.main", f"--workdir={workdir}", *ARGS, *extra]
  proc = subprocess.run(cmd, cwd=REPO, env=_env(demo_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True, preexec_fn=preexec_fn, timeout=600)
  return proc.returncode, proc.stdout


def _tail(log, n=3000):
  """The end of a log for an assertion message, without the one huge line a fatal error prints (the module list)."""
  return "\n".join(line for line in log.splitlines() if not line.startswith("Extension modules:"))[-n:]


def _last_line(log):
  line = log.rstrip("\n").rsplit("\n", 1)[-1]
  print(f"\n{len(log.splitlines())} lines of output, the last: {line}")  # pytest -s shows what a user sees
  return line


def test_a_second_trainer_on_a_workdir_is_refused_in_one_line(tmp_path, demo_cache_dir):
  from lcl_jax import workdir_lock
  with workdir_lock.acquire(str(tmp_path)):  # the first trainer, as far as the lock can tell
    rc, log = _main(tmp_path, demo_cache_dir)
  assert rc == 1 and "Traceback" not in log, _tail(log)
  assert _last_line(log).startswith(f"lcl_jax: Workdir {tmp_path} is in use by another trainer: ")
  assert f"pid {os.getpid()}" in _last_line(log) and not (tmp_path / "checkpoints").exists()


@contextlib.contextmanager
def _small_disk(path, megabytes):
  """A filesystem of `megabytes` at path (tmpfs, as root), else a per-file size limit for the child (EFBIG)."""
  path.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                           capture_output=True).returncode == 0
  limit = None if mounted else (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (megabytes << 20,) * 2))
  try:
    yield limit
  finally:
    if mounted:
      subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_stops_the_run_at_the_failed_save_in_one_line(tmp_path, demo_cache_dir):
  with _small_disk(tmp_path / "disk", 8) as preexec_fn:  # room for two checkpoints of this model, not three
    workdir = tmp_path / "disk" / "run"
    rc, log = _main(workdir, demo_cache_dir, preexec_fn=preexec_fn)
    line = _last_line(log)
    assert rc == 1 and "Traceback" not in log, _tail(log)
    m = re.fullmatch(r"lcl_jax: Saving checkpoint step (\d+) to (\S+) failed: (.+)\. Last good checkpoint: "
                     r"(step \d+|none)\. Fix the storage .*", line)
    assert m and m.group(2) == str(workdir / "checkpoints" / m.group(1)), line
    assert "No space left" in m.group(3) or "too large" in m.group(3), line
    assert not list((workdir / "checkpoints").glob("*orbax-checkpoint-tmp*"))
    from lcl_jax import checkpoint
    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), every_steps=2, keep=3)
    last = ckpt.latest_step()
    assert m.group(4) == (f"step {last}" if last is not None else "none") and last < int(m.group(1))
    if last is not None:
      assert ckpt.restore_arrays(last)[1][0]["batches"] == last  # the last good one is intact
    ckpt.close()


def test_a_failed_metric_write_is_logged_without_its_traceback(caplog):
  """The full disk above can fill under the event file first: clu's writer thread logs that failure with a traceback,
  then re-raises it in the loop, which reports it in one line. The thread's record keeps its message, not the echo."""
  import logging as std_logging
  from absl import logging
  from clu import asynclib
  handler, hook = logging.get_absl_handler(), sys.unraisablehook
  filters = list(handler.filters)
  pool = asynclib.Pool(thread_name_prefix="AsyncWriter")

  def write():
    raise OSError("No space left on device")
  try:
    main.quiet_storage_logs()
    with caplog.at_level(std_logging.ERROR):
      pool(write)().exception()
    assert pool.clear_errors()  # re-raised in the loop: lcl_jax.train reports it in one line
    pool.close()
    [record] = [r for r in caplog.records if r.pathname.endswith("/clu/asynclib.py")]
    assert record.exc_info is not None  # what clu logs: the error and its traceback
    assert handler.filter(record) and record.exc_info is None and "AsyncWriter" in record.getMessage()
  finally:
    handler.filters[:] = filters
    sys.unraisablehook = hook


def test_bad_config_fails_at_start_with_the_key_to_fix_in_one_line(tmp_path, demo_cache_dir):
  rc, log = _main(tmp_path / "w", demo_cache_dir, extra=["--config.data.rows_per_batch=0"])
  assert rc == 2 and _last_line(log).startswith("lcl_jax: config.data.rows_per_batch=0 must be"), _tail(log)
  assert "Traceback" not in log and "Config:" not in log
  rc, log = _main(tmp_path / "w", demo_cache_dir, extra=["--config.optim.peak_lrr=1"])
  assert rc == 2 and "config.optim has no 'peak_lrr'" in _last_line(log) and "Traceback" not in log
  # A replaced key names its successor (checked in-process: the same function main calls on a bad override).
  message = main.unknown_override(["--config=configs/vitb16_mmc4.py:runlocal", "--config.loss.lm_loss_chunks=3"])
  assert "config.loss.lm_loss_chunks was replaced by config.loss.lm_block_size" in message, message
