"""Two processes on this machine (4 CPU devices each, loopback coordinator, gloo collectives) train the same as one
process with 8 devices over the same global batches."""
import os
import socket
import subprocess
import sys

import numpy as np

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(tmp_path, name, num_processes, devices_per_process):
  out, workdir = tmp_path / f"{name}_out", tmp_path / f"{name}_workdir"
  out.mkdir()
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
  procs = [subprocess.Popen([sys.executable, WORKER, str(out), str(workdir), str(num_processes), str(i), str(port),
                             str(devices_per_process)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(num_processes)]
  logs = [p.communicate(timeout=900)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  return dict(np.load(out / "params.npz")), workdir


def test_two_processes_match_one(tmp_path):
  two, workdir = _run(tmp_path, "two", 2, 4)
  one, _ = _run(tmp_path, "one", 1, 8)
  assert int(two["step"]) == int(one["step"]) == 3
  np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
  assert set(two) == set(one)
  # Adam turns round-off in gradients that are ~0 (e.g. attention key biases, which softmax ignores) into updates
  # of up to ~lr/10; everything else agrees far more tightly.
  diffs = np.concatenate([np.abs(two[k] - one[k]).ravel() for k in one if k not in ("loss", "step")])
  assert diffs.max() < 1e-4 and np.median(diffs) < 1e-7, (diffs.max(), np.median(diffs))
  # One checkpoint directory per step, written once for the run (not once per process).
  steps = sorted(os.listdir(workdir / "checkpoints"))
  assert "3" in steps and all(not s.endswith("tmp") for s in steps)
