"""`python -m lcl_jax.main` end to end on the demo corpus: SIGTERM saves and exits cleanly; the restarted run
continues exactly (same params, same data, same metrics) as an uninterrupted one; bad configs fail at start-up."""
import glob
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
ARGS = ["--config=configs/vitb16_mmc4.py:runlocal", f"--config.optim.total_steps={STEPS}",
        "--config.log_every=1", "--config.ckpt.every_steps=100", "--config.evals.zeroshot_digits.every_steps=0",
        "--config.evals.retrieval_digits.every_steps=0", "--config.evals.linear_probe_digits.every_steps=0",
        "--config.evals.attention_probe_digits.every_steps=0", "--config.evals.perplexity_digits.every_steps=0"]


def _env(demo_dir):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a laptop
  env["LCL_DEMO_DIR"] = str(demo_dir)
  return env


def _main(workdir, demo_dir, extra=(), sigterm_after_step=None):
  cmd = [sys.executable, "-m", "lcl_jax.main", f"--workdir={workdir}", *ARGS, *extra]
  proc = subprocess.Popen(cmd, cwd=REPO, env=_env(demo_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  log = []
  for line in proc.stdout:
    log.append(line)
    m = re.search(r"\] \[(\d+)\] steps_per_sec", line)
    if sigterm_after_step is not None and m and int(m.group(1)) >= sigterm_after_step:
      proc.send_signal(signal.SIGTERM)
      sigterm_after_step = None
  proc.wait(timeout=600)
  return proc.returncode, "".join(log)


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


def test_sigterm_and_restart_continue_exactly(tmp_path, demo_dir):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  rc, log = _main(straight, demo_dir)
  assert rc == 0, log[-3000:]
  rc, log = _main(resumed, demo_dir, sigterm_after_step=3)
  assert rc == 0, log[-3000:]
  assert "SIGTERM received" in log
  stopped_at = int(re.search(r"Saved step (\d+) after SIGTERM", log).group(1))
  assert 3 <= stopped_at < STEPS
  rc, log = _main(resumed, demo_dir)
  assert rc == 0, log[-3000:]
  assert f"Resumed from step {stopped_at}" in log

  from lcl_jax import checkpoint
  finals = []
  for workdir in (straight, resumed):
    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), every_steps=100, keep=3)
    assert ckpt.latest_step() == STEPS
    finals.append(ckpt.restore_arrays(STEPS)[0])
    ckpt.close()
  import jax
  jax.tree.map(np.testing.assert_array_equal, finals[0]["params"], finals[1]["params"])
  # Metrics after the resume are identical, data metrics included: the same batches were fed.
  a, b = _scalars(str(straight)), _scalars(str(resumed))
  after = [k for k in a if k[1] > stopped_at and not k[0].endswith(("per_sec", "mfu", "uptime"))
           and not k[0].startswith("data/skipped")]
  assert any(k[0] == "loss" for k in after) and any(k[0].startswith("data/rows") for k in after)
  for key in after:
    assert a[key] == b[key], key


def test_bad_config_fails_at_start_with_the_key_to_fix(tmp_path, demo_dir):
  rc, log = _main(tmp_path / "w", demo_dir, extra=["--config.data.rows_per_batch=0"])
  assert rc != 0 and "config.data.rows_per_batch" in log
  rc, log = _main(tmp_path / "w", demo_dir, extra=["--config.optim.peak_lrr=1"])
  assert rc != 0 and "config.optim has no 'peak_lrr'" in log
