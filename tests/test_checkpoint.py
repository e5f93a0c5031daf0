"""Checkpoints: round trip with the data state, and a write interrupted halfway leaves the previous one usable."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from lcl_jax import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(value, size=1000):
  return {"w": jnp.full((size,), value, jnp.float32), "step": jnp.asarray(value, jnp.int32)}


def _abstract(size=1000):
  return jax.eval_shape(lambda: _state(0, size))


def test_round_trip_with_data_state(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=2, keep=2)
  ckpt.save(2, _state(2), {"position": 2**40 + 5}, wait=True)
  state, hosts = ckpt.restore(2, _abstract())
  assert float(state["w"][0]) == 2 and hosts == [{"position": 2**40 + 5}]
  assert ckpt.due(4) and not ckpt.due(3)
  ckpt.close()


def test_keeps_last_k_plus_every_mth(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=2, keep_every=4)
  for step in range(1, 10):
    ckpt.save(step, _state(step, 10), {"position": step})
  ckpt.wait()
  assert sorted(ckpt.all_steps()) == [4, 8, 9]
  ckpt.close()


def test_interrupted_write_leaves_previous_checkpoint_usable(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3)
  ckpt.save(1, _state(1), {"position": 1}, wait=True)
  ckpt.close()
  # A process that starts writing step 2 (async, large) and dies before the write is finalised.
  script = textwrap.dedent(f"""
      import os, jax.numpy as jnp
      from lcl_jax import checkpoint
      ckpt = checkpoint.Checkpointer({str(tmp_path)!r}, every_steps=1, keep=3)
      state = {{"w": jnp.full((40_000_000,), 2.0, jnp.float32), "step": jnp.asarray(2, jnp.int32)}}
      ckpt.save(2, state, {{"position": 2}})
      os._exit(1)
  """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert any(name.startswith("2.orbax-checkpoint-tmp") for name in os.listdir(tmp_path)), os.listdir(tmp_path)
  # Also a half-written step 3 left by hand, as orbax names its temporaries.
  partial = tmp_path / "3.orbax-checkpoint-tmp-1234"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "_METADATA").write_text("{\"truncat")
  ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3)
  assert ckpt.latest_step() == 1
  state, hosts = ckpt.restore(1, _abstract())
  assert int(state["step"]) == 1 and hosts == [{"position": 1}]
  assert np.all(np.asarray(state["w"]) == 1)
  ckpt.close()
