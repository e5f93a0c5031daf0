"""`python -m lcl_jax.main` end to end on the demo corpus, and the faults users meet, each ending in one line:
SIGTERM saves and exits cleanly and the restarted run continues exactly (same params, same data, same metrics) as an
uninterrupted one; a corrupt latest checkpoint is set aside and the run resumes from the one before, ending where a
straight run ends; a second trainer on a workdir is refused; a full disk stops the run at the failed save; bad
configs fail at start-up. (Several processes: tests/test_multihost.py.)"""
import contextlib
import glob
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
ARGS = ["--config=configs/vitb16_mmc4.py:runlocal", f"--config.optim.total_steps={STEPS}",
        "--config.log_every=1", "--config.ckpt.every_steps=2", "--config.evals.zeroshot_digits.every_steps=0",
        "--config.evals.retrieval_digits.every_steps=0", "--config.evals.linear_probe_digits.every_steps=0",
        "--config.evals.attention_probe_digits.every_steps=0", "--config.evals.perplexity_digits.every_steps=0"]


def _env(demo_dir):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a laptop
  env["LCL_DEMO_DIR"] = str(demo_dir)
  return env


def _main(workdir, demo_dir, extra=(), sigterm_after_step=None, preexec_fn=None):
  cmd = [sys.executable, "-m", "lcl_jax.main", f"--workdir={workdir}", *ARGS, *extra]
  proc = subprocess.Popen(cmd, cwd=REPO, env=_env(demo_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, preexec_fn=preexec_fn)
  log = []
  for line in proc.stdout:
    log.append(line)
    m = re.search(r"\] \[(\d+)\] steps_per_sec", line)
    if sigterm_after_step is not None and m and int(m.group(1)) >= sigterm_after_step:
      proc.send_signal(signal.SIGTERM)
      sigterm_after_step = None
  proc.wait(timeout=600)
  return proc.returncode, "".join(log)


def _tail(log, n=3000):
  """The end of a log for an assertion message, without the one huge line a fatal error prints (the module list)."""
  return "\n".join(line for line in log.splitlines() if not line.startswith("Extension modules:"))[-n:]


def _scalars(workdir):
  events = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  out = {}
  for path in events:
    acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    for tag in acc.Tags()["tensors"]:
      for e in acc.Tensors(tag):
        out[(tag, e.step)] = float(np.asarray(e.tensor_proto.float_val or e.tensor_proto.double_val or [0])[0])
  return out


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, demo_dir):
  workdir = tmp_path_factory.mktemp("straight") / "run"
  rc, log = _main(workdir, demo_dir)
  assert rc == 0, _tail(log)
  return workdir


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, demo_dir):
  """SIGTERM after step 3, then the same command again: -> (workdir, step saved at SIGTERM, both logs)."""
  workdir = tmp_path_factory.mktemp("resumed") / "run"
  rc, first = _main(workdir, demo_dir, sigterm_after_step=3)
  assert rc == 0, _tail(first)
  stopped_at = int(re.search(r"Saved step (\d+) after SIGTERM", first).group(1))
  rc, second = _main(workdir, demo_dir)
  assert rc == 0, _tail(second)
  return workdir, stopped_at, first, second


def _final_params(workdir, step=STEPS):
  from lcl_jax import checkpoint
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), every_steps=100, keep=3)
  assert ckpt.latest_step() == step, ckpt.all_steps()
  params = ckpt.restore_arrays(step)[0]["params"]
  ckpt.close()
  return params


def _assert_same_params(a, b):
  import jax
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _last_line(log):
  return log.rstrip("\n").rsplit("\n", 1)[-1]


def test_sigterm_and_restart_continue_exactly(straight, resumed):
  workdir, stopped_at, first, second = resumed
  assert "SIGTERM received" in first and 3 <= stopped_at < STEPS
  assert f"Resumed from step {stopped_at}" in second
  _assert_same_params(_final_params(straight), _final_params(workdir))
  # Metrics after the resume are identical, data metrics included: the same batches were fed.
  a, b = _scalars(str(straight)), _scalars(str(workdir))
  after = [k for k in a if k[1] > stopped_at and not k[0].endswith(("per_sec", "mfu", "uptime"))
           and not k[0].startswith("data/skipped")]
  assert any(k[0] == "loss" for k in after) and any(k[0].startswith("data/rows") for k in after)
  for key in after:
    assert a[key] == b[key], key


def test_corrupt_latest_checkpoint_is_set_aside_and_the_run_ends_as_a_straight_one(tmp_path, demo_dir, straight,
                                                                                   resumed):
  workdir = tmp_path / "run"
  shutil.copytree(resumed[0], workdir)
  arrays = [p for p in (workdir / "checkpoints" / str(STEPS)).rglob("*") if p.is_file() and "ocdbt.process_" in str(p)]
  largest = max(arrays, key=lambda p: p.stat().st_size)
  with open(largest, "r+b") as f:
    f.truncate(largest.stat().st_size // 2)
  rc, log = _main(workdir, demo_dir)
  assert rc == 0, _tail(log)
  lines = [line for line in log.splitlines() if "cannot be restored" in line]
  assert len(lines) == 1 and f"Checkpoint step {STEPS} at {workdir / 'checkpoints' / str(STEPS)}" in lines[0]
  assert "Traceback" not in log and f"Resumed from step {STEPS - 2}" in log
  assert len(list((workdir / "checkpoints").glob(f"{STEPS}.corrupt-*"))) == 1
  _assert_same_params(_final_params(straight), _final_params(workdir))  # the two lost steps were trained again


def test_a_second_trainer_on_a_workdir_is_refused_in_one_line(tmp_path, demo_dir):
  from lcl_jax import workdir_lock
  with workdir_lock.acquire(str(tmp_path)):  # the first trainer, as far as the lock can tell
    rc, log = _main(tmp_path, demo_dir)
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


def test_a_full_disk_stops_the_run_at_the_failed_save_in_one_line(tmp_path, demo_dir):
  with _small_disk(tmp_path / "disk", 8) as preexec_fn:  # room for two checkpoints of this model, not three
    workdir = tmp_path / "disk" / "run"
    rc, log = _main(workdir, demo_dir, preexec_fn=preexec_fn)
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


def test_bad_config_fails_at_start_with_the_key_to_fix_in_one_line(tmp_path, demo_dir):
  rc, log = _main(tmp_path / "w", demo_dir, extra=["--config.data.rows_per_batch=0"])
  assert rc == 2 and _last_line(log).startswith("lcl_jax: config.data.rows_per_batch=0 must be"), _tail(log)
  assert "Traceback" not in log and "Config:" not in log
  rc, log = _main(tmp_path / "w", demo_dir, extra=["--config.optim.peak_lrr=1"])
  assert rc == 2 and "config.optim has no 'peak_lrr'" in _last_line(log) and "Traceback" not in log
