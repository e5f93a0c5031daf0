"""Checkpoints: round trip with the data state, and a write interrupted halfway leaves the previous one usable."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def _random_state(value):
  """Incompressible values, so the array data is a file of its own that the corruptions below can reach."""
  w = np.random.default_rng(0).random(100_000, np.float32) + value
  return {"w": jnp.asarray(w), "step": jnp.asarray(value, jnp.int32)}


def _largest_array_file(step_dir):
  files = [p for p in step_dir.rglob("*") if p.is_file() and "ocdbt.process_" in str(p)]
  return max(files, key=lambda p: p.stat().st_size)


def _truncate(step_dir):
  path = _largest_array_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(path.stat().st_size // 2)


def _delete_metadata(step_dir):
  (step_dir / "state" / "_METADATA").unlink()


def _random_bytes(step_dir):
  path = _largest_array_file(step_dir)
  size = path.stat().st_size
  with open(path, "r+b") as f:
    f.seek(size // 3)
    f.write(np.random.default_rng(1).bytes(size // 3))


# A failed restore leaves orbax's other pending reads to fail as unraisable exceptions (main.py drops them).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("corrupt", [_truncate, _delete_metadata, _random_bytes], ids=lambda f: f.__name__[1:])
def test_restore_latest_skips_a_corrupt_step(tmp_path, corrupt, caplog):
  ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3)
  for step in (1, 2, 3):
    ckpt.save(step, _random_state(step), {"position": step}, wait=True)
  ckpt.close()
  corrupt(tmp_path / "3")
  ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3)
  with caplog.at_level("ERROR"):
    step, state, hosts = ckpt.restore_latest(jax.eval_shape(lambda: _random_state(0)))
  assert step == 2 and hosts == [{"position": 2}] and int(state["step"]) == 2
  np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_random_state(2)["w"]))
  moved = [p.name for p in tmp_path.iterdir() if p.name.startswith("3.corrupt-")]
  assert len(moved) == 1 and not (tmp_path / "3").exists() and sorted(ckpt.all_steps()) == [1, 2]
  lines = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
  assert len(lines) == 1 and "\n" not in lines[0], lines
  assert f"step 3 at {tmp_path / '3'}" in lines[0] and moved[0] in lines[0]
  ckpt.save(3, _random_state(30), {"position": 30}, wait=True)  # the run goes on and writes step 3 anew
  assert ckpt.restore_latest(jax.eval_shape(lambda: _random_state(0)))[0] == 3
  ckpt.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_restore_latest_with_no_good_step_says_what_to_do(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3)
  assert ckpt.restore_latest(_abstract()) is None  # nothing saved yet: a fresh start, not an error
  for step in (1, 2):
    ckpt.save(step, _random_state(step), {"position": step}, wait=True)
  ckpt.close()
  _delete_metadata(tmp_path / "1")
  _truncate(tmp_path / "2")
  ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3)
  with pytest.raises(checkpoint.CheckpointError) as e:
    ckpt.restore_latest(jax.eval_shape(lambda: _random_state(0)))
  message = str(e.value)
  assert "\n" not in message and "step 2 (ValueError: OUT_OF_RANGE" in message and "step 1 (FileNotFoundError" in message
  assert "rerun the same command" in message
  assert ckpt.all_steps() == [] and len(list(tmp_path.glob("*.corrupt-*"))) == 2
  ckpt.close()

