"""Writes tests/fixtures/torch_small.pt (+ .npz with the same tensors as numpy) with real torch: the input of
tests/test_torch_files.py, which reads it without torch. Run where torch is installed:

  python tools/torch_fixtures.py      # pip install torch==2.13.0 safetensors (the CPU build of torch) first

It also writes the same tensors with the `safetensors` package (torch_small.safetensors), and checks the other
direction: a file written by lcl_jax.interop.torch_files.write_safetensors loads in safetensors.torch unchanged.

The tensors cover what checkpoints hold: float32 / float16 / bfloat16 / int64 / bool, a 0-d scalar (logit_scale),
a transposed (non-contiguous) view and a slice at a storage offset that shares its storage with another tensor,
inside the {"epoch", "state_dict"} wrapper open_clip's training writes.
"""
import collections
import os

import sys
import tempfile

import numpy as np
import safetensors.torch
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lcl_jax.interop import torch_files  # noqa: E402  pylint: disable=wrong-import-position

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")


def main():
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=g)
  state = collections.OrderedDict(
      weight=torch.randn(4, 3, generator=g),
      half=torch.randn(3, 2, generator=g).half(),
      bf16=torch.randn(5, generator=g).bfloat16(),
      ids=torch.arange(7, dtype=torch.int64),
      mask=torch.tensor([True, False, True]),
      logit_scale=torch.tensor(2.6592600345611572),
      transposed=base.t(),          # strides (1, 5)
      rows=base[2:4],               # storage offset 10, shares base's storage
  )
  os.makedirs(OUT, exist_ok=True)
  torch.save({"epoch": 3, "state_dict": state}, os.path.join(OUT, "torch_small.pt"))
  as_numpy = {k: (v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()) for k, v in state.items()}
  np.savez(os.path.join(OUT, "torch_small.npz"), **as_numpy)
  contiguous = {k: v.contiguous() for k, v in state.items() if k not in ("rows", "transposed")}  # no shared storage
  safetensors.torch.save_file(contiguous, os.path.join(OUT, "torch_small.safetensors"))

  ours = os.path.join(tempfile.mkdtemp(), "ours.safetensors")
  torch_files.write_safetensors(ours, torch_files.read_state_dict(os.path.join(OUT, "torch_small.pt")))
  loaded = safetensors.torch.load_file(ours)
  assert sorted(loaded) == sorted(state)
  for k, v in state.items():
    assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v.contiguous()), k
  print("fixtures written; lcl_jax's safetensors load in safetensors.torch unchanged")


if __name__ == "__main__":
  main()
