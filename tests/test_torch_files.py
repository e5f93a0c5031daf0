"""PyTorch checkpoint files without torch: tensors read exactly as torch wrote them (tests/fixtures, written by
tools/torch_fixtures.py with real torch), and a pickle that would run code is refused before it runs."""
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from lcl_jax.interop import torch_files

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _expected():
  return dict(np.load(os.path.join(FIXTURES, "torch_small.npz")))


def _check(got, want):
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    g = got[k].astype(np.float32) if got[k].dtype == ml_dtypes.bfloat16 else got[k]
    assert g.shape == v.shape and g.dtype == v.dtype, (k, g.shape, g.dtype, v.shape, v.dtype)
    np.testing.assert_array_equal(g, v, err_msg=k)


def test_torch_save_file_reads_exactly():
  got = torch_files.read_state_dict(os.path.join(FIXTURES, "torch_small.pt"))  # {"epoch", "state_dict"} unwrapped
  _check(got, _expected())
  assert got["bf16"].dtype == ml_dtypes.bfloat16 and got["half"].dtype == np.float16 and got["logit_scale"].shape == ()
  assert got["transposed"].flags.c_contiguous


def test_safetensors_file_reads_exactly_and_round_trips(tmp_path):
  want = {k: v for k, v in _expected().items() if k not in ("rows", "transposed")}
  got = torch_files.read_state_dict(os.path.join(FIXTURES, "torch_small.safetensors"))
  _check(got, want)
  path = str(tmp_path / "again.safetensors")
  torch_files.write_safetensors(path, got, metadata={"format": "pt"})
  again = torch_files.read_state_dict(path)
  for k in got:
    assert again[k].dtype == got[k].dtype
    np.testing.assert_array_equal(again[k].astype(np.float32), got[k].astype(np.float32))


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def _torch_like_zip(path, payload):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", payload)
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3\n")


def test_a_pickle_that_runs_code_is_refused_before_it_runs(tmp_path):
  marker = tmp_path / "ran"
  path = tmp_path / "evil.pt"
  _torch_like_zip(path, pickle.dumps({"state_dict": {"w": _RunsCode(marker)}}, protocol=2))
  with pytest.raises(torch_files.CheckpointFormatError, match=r"system, which a state dict never needs"):
    torch_files.read_state_dict(str(path))
  assert not marker.exists()


def test_files_that_are_not_state_dicts_fail_with_a_message(tmp_path):
  legacy = tmp_path / "legacy.pt"
  legacy.write_bytes(pickle.dumps({"w": 1}))
  with pytest.raises(torch_files.CheckpointFormatError, match="legacy format"):
    torch_files.read_state_dict(str(legacy))
  plain = tmp_path / "plain.pt"
  _torch_like_zip(plain, pickle.dumps({"w": [1, 2]}, protocol=2))
  with pytest.raises(torch_files.CheckpointFormatError, match="expected a state dict of tensors"):
    torch_files.read_state_dict(str(plain))
  broken = tmp_path / "broken.pt"
  _torch_like_zip(broken, b"\x80\x02}q\x00")  # truncated pickle
  with pytest.raises(torch_files.CheckpointFormatError, match="unreadable pickle"):
    torch_files.read_state_dict(str(broken))
