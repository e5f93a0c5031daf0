"""Throughput and model FLOPs utilisation (MFU), and deferred metric reads.

MFU = model FLOPs per step / (step time * devices * peak FLOP/s per device). Model FLOPs are counted
analytically (matmuls and attention, forward x 3 for forward + backward, every row and image slot of the batch,
causal attention counted as full as in PaLM's accounting). Peaks are dense bf16 per chip from vendor sheets; on
CPU the peak is measured once with a large float32 matmul on the same machine.
"""
import functools
import re
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import batch_spec

# Per device: (name used by `plan --device_kind`, pattern matched against jax's device_kind, dense bf16 peak FLOP/s,
# memory GiB). Vendor sheets; first match wins.
DEVICES = (
    ("tpu_v6e", r"v6|trillium", 918e12, 32),
    ("tpu_v5p", r"v5p", 459e12, 95),
    ("tpu_v5e", r"v5 ?lite|v5e", 197e12, 16),
    ("tpu_v4", r"v4", 275e12, 32),
    ("b200", r"b200", 2250e12, 180),
    ("h200", r"h200", 989e12, 141),
    ("h100", r"h100|h800|gh200", 989e12, 80),
    ("a100", r"a100|a800", 312e12, 80),
)


def device_spec(name_or_kind: str) -> Optional[tuple[str, float, float]]:
  """(name, peak FLOP/s, memory GiB) for a plan name ("h200") or a jax device_kind ("NVIDIA H200"); None if
  unknown."""
  kind = name_or_kind.lower()
  for name, pattern, peak, gib in DEVICES:
    if kind == name or re.search(pattern, kind):
      return name, peak, gib
  return None


def peak_flops_per_device(device_kind: str) -> Optional[float]:
  spec = device_spec(device_kind)
  return None if spec is None else spec[1]


def measure_matmul_peak(n: int = 1024, repeats: int = 5, dtype=jnp.float32) -> float:
  """FLOP/s of the best of `repeats` n x n matmuls on the default device (the CPU peak stand-in). n = 1024: on a
  2-core CPU it measured 138-145 GFLOP/s against 2048's 122-128, in a fifth of the time (2048 cost a 2-process
  trainer's start-up 2.5 s)."""
  x = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best


@functools.lru_cache(maxsize=1)
def device_peak_flops() -> tuple[float, str]:
  """(peak FLOP/s of one local device, where the number came from)."""
  device = jax.local_devices()[0]
  peak = peak_flops_per_device(device.device_kind)
  if peak is not None:
    return peak, f"table: {device.device_kind}"
  return measure_matmul_peak() / max(len(jax.local_devices()), 1), "measured float32 matmul"


def _transformer_flops(tokens, width, mlp, depth, seq):
  """Forward FLOPs of `depth` pre-LN blocks over `tokens` tokens in sequences of `seq`."""
  dense = 2 * tokens * (4 * width * width + 2 * width * mlp)
  attention = 2 * 2 * tokens * seq * width
  return depth * (dense + attention)


def lm_head_flops(model_config, positions: float) -> float:
  """Training FLOPs of the LM head and its loss at `positions` positions: one logits matmul forward, two
  backward (the target-only loss makes each block's logits once)."""
  return 3.0 * 2 * positions * model_config.decoder.width * model_config.decoder.vocab_size


def lm_positions_estimate(model_config, loss_config, *, rows: int, image_slots: int, seq_len: int,
                          num_chunks: int) -> tuple[int, int]:
  """(positions the target-only LM head computes, positions with a target) for a step whose image slots are all
  filled and whose other positions are text: per row the L - 1 predicting positions less K + 1 per image (the
  positions that predict `<img>` or `<eoi>`), per chunk rounded up to whole blocks. A planning number: the
  training loop logs the measured ones (lm_head_positions, num_text_targets)."""
  k = batch_spec.patches_per_image(model_config.vit)
  useful = max(rows * (seq_len - 1) - image_slots * (k + 1), 0)
  block = min(loss_config.lm_block_size, rows // num_chunks * seq_len)
  per_chunk = -(-useful // num_chunks)
  return -(-per_chunk // block) * block * num_chunks, useful


def model_flops_per_step(model_config, *, rows: int, image_slots: int, seq_len: int,
                         generation: bool = True, lm_positions: Optional[float] = None) -> float:
  """Training FLOPs (forward + backward = 3 x forward) of one step of the LCL model.

  lm_positions: positions the LM head runs on (the target-only loss: targets rounded up to whole blocks, see
  losses.lm_head_positions); None counts every position, an upper bound. Pass the number of targets for the
  useful FLOPs.
  """
  v, d = model_config.vit, model_config.decoder
  k = batch_spec.patches_per_image(v)
  patch_pixels = v.patch_size ** 2 * 3
  vit = image_slots * (2 * k * patch_pixels * v.width) + _transformer_flops(
      image_slots * k, v.width, v.mlp_dim, v.depth, k)
  pool = image_slots * 2 * (2 * k * v.width * v.width + 2 * k * v.width + v.width * model_config.embed_dim)
  image_proj = 2 * image_slots * k * v.width * d.width
  tokens = rows * seq_len
  decoder = _transformer_flops(tokens, d.width, d.mlp_dim, d.depth, seq_len)
  lm_head = 0.0
  if generation:
    lm_head = lm_head_flops(model_config, tokens if lm_positions is None else lm_positions)
  return 3.0 * (vit + pool + image_proj + decoder) + lm_head


class DeferredMetrics:
  """Holds a logged step N's metrics (device arrays) and reads them after step N + 1 is dispatched, so the host
  never waits for the device on a metrics transfer; the metrics of the steps in between are never read."""

  def __init__(self):
    self._pending = None

  def push(self, step: int, metrics=None) -> Optional[tuple[int, dict]]:
    """Keeps this step's metrics to read later (None: a step that is not logged; nothing is kept or read); returns
    the step kept before, with its metrics as floats, or None."""
    previous, self._pending = self._pending, None if metrics is None else (step, metrics)
    return None if previous is None else (previous[0], to_floats(previous[1]))

  def flush(self) -> Optional[tuple[int, dict]]:
    previous, self._pending = self._pending, None
    return None if previous is None else (previous[0], to_floats(previous[1]))


def to_floats(metrics) -> dict:
  """Device arrays and host numbers -> floats; one wait for all of them (device_get starts every copy first)."""
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
