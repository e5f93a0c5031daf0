"""Dot-product attention by kernel: XLA with a dense mask (always available), cuDNN flash attention, and the Pallas
flash kernels that take segment ids (TPU splash, GPU Triton), so packed decoder rows never build an L x L mask.

Kernels (config.model.attention):
  xla     jax.nn.dot_product_attention with a boolean mask: every platform, the reference. Causal rows run as query
          blocks against only the keys before each block's end (half the score work at L = 2048).
  cudnn   GPU: cuDNN flash attention via jax.nn.dot_product_attention(implementation="cudnn"). jax 0.10.2 gives it
          causal and length masks only (its packed layout is private API), so it serves the ViT, not packed rows.
  splash  TPU: jax.experimental.pallas.ops.tpu.splash_attention, causal + segment ids, no mask for the ViT.
  triton  GPU: jax.experimental.pallas.ops.gpu.attention.mha, causal + segment ids.
  auto    the best the platform has: TPU splash / splash, GPU cudnn (ViT) / triton (decoder), CPU xla / xla.

The Pallas kernels are custom calls the SPMD partitioner cannot split, so under a mesh they run in shard_map over
the batch and head axes (the activations' logical rules); sequences are padded to whole blocks, the pad in a
segment of its own.
"""
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lcl_jax import axes

KERNELS = ("auto", "xla", "cudnn", "splash", "triton")
_AUTO = {"tpu": ("splash", "splash"), "gpu": ("cudnn", "triton")}
_PLATFORM = {"splash": "tpu", "triton": "gpu", "cudnn": "gpu"}
_PAD_SEGMENT = -1  # never a real segment id (those are >= 0; 0 is padding)
_XLA_CAUSAL_BLOCK = 128  # query block of the xla kernel's causal path


class KernelUnavailable(ValueError):
  """A requested attention kernel cannot run here; the message says what to set instead."""


def resolve(requested: str, platform: str) -> tuple[str, str]:
  """(ViT kernel, decoder kernel) for config.model.attention on `platform` ("cpu" / "gpu" / "tpu")."""
  if requested not in KERNELS:
    raise KernelUnavailable(f"config.model.attention={requested!r} is not one of {', '.join(KERNELS)}.")
  if requested == "auto":
    return _AUTO.get(platform, ("xla", "xla"))
  if requested != "xla" and _PLATFORM[requested] != platform:
    raise KernelUnavailable(
        f"config.model.attention={requested!r} needs a {_PLATFORM[requested].upper()}, and this run's devices are "
        f"{platform.upper()}: set --config.model.attention=auto (the best kernel here) or xla.")
  if requested == "cudnn":
    raise KernelUnavailable(
        "config.model.attention='cudnn' cannot mask the decoder's packed rows (several segments per row): cuDNN "
        "through jax.nn.dot_product_attention takes causal and length masks only. Set auto (cuDNN for the ViT, the "
        "Triton flash kernel with segment ids for the decoder) or triton.")
  return requested, requested


def segment_mask(segment_ids, causal: bool):
  """[B, L] -> bool [B, 1, L, L]: query i sees key j iff both are in the same segment (and j <= i if causal)."""
  mask = segment_ids[:, :, None] == segment_ids[:, None, :]
  if causal:
    length = segment_ids.shape[-1]
    mask &= jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
  return mask[:, None]


def dot_product_attention(q, k, v, *, kernel: str = "xla", causal: bool = False, segment_ids=None,
                          interpret: bool = False):
  """q [B, T, N, H], k / v [B, S, N, H] -> [B, T, N, H]. segment_ids [B, T] (self-attention, T == S) restricts
  attention to equal ids; None attends everywhere (the ViT). interpret runs the Pallas kernels on CPU (tests)."""
  if kernel == "xla":
    if causal and q.shape[1] == k.shape[1] and q.shape[1] >= 2 * _XLA_CAUSAL_BLOCK:
      return _xla_causal_blocks(q, k, v, segment_ids)
    mask = None if segment_ids is None else segment_mask(segment_ids, causal)
    if mask is None and causal:
      return jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return jax.nn.dot_product_attention(q, k, v, mask=mask)
  if kernel == "cudnn":
    if segment_ids is not None:
      raise KernelUnavailable("the cudnn kernel takes no segment ids (packed rows): use splash, triton or xla.")
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
  if kernel not in ("splash", "triton"):
    raise KernelUnavailable(f"unknown attention kernel {kernel!r}.")
  if q.shape[1] != k.shape[1]:
    raise ValueError(f"The {kernel} kernel serves self-attention; got {q.shape[1]} queries, {k.shape[1]} keys.")
  if segment_ids is None:
    segment_ids = jnp.zeros(q.shape[:2], jnp.int32)
  fn = functools.partial(_splash if kernel == "splash" else _triton, causal=causal, interpret=interpret)
  return _per_shard(fn, q, k, v, segment_ids)


def _xla_causal_blocks(q, k, v, segment_ids):
  """Causal attention as query blocks that each read only the keys up to their own end: the triangle, not the
  square ((n + 1) / 2n of the score work for n blocks); each block keeps the segment mask."""
  length = q.shape[1]
  if segment_ids is None:
    segment_ids = jnp.zeros(q.shape[:2], jnp.int32)
  positions = jnp.arange(length)
  outs = []
  for start in range(0, length, _XLA_CAUSAL_BLOCK):
    end = min(start + _XLA_CAUSAL_BLOCK, length)
    mask = segment_ids[:, start:end, None] == segment_ids[:, None, :end]
    mask &= positions[start:end, None] >= positions[None, :end]
    outs.append(jax.nn.dot_product_attention(q[:, start:end], k[:, :end], v[:, :end], mask=mask[:, None]))
  return jnp.concatenate(outs, axis=1)


def _per_shard(fn, q, k, v, segment_ids):
  """Runs fn per device over batch and head shards when a mesh is set (jax.set_mesh), else directly."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return fn(q, k, v, segment_ids)
  qkv = nn.logical_to_mesh_axes((axes.ACT_BATCH, None, axes.ACT_HEADS, None))
  seg = nn.logical_to_mesh_axes((axes.ACT_BATCH, None))
  return jax.shard_map(fn, in_specs=(qkv, qkv, qkv, seg), out_specs=qkv, check_vma=False)(q, k, v, segment_ids)


def _pad_to_blocks(q, k, v, segment_ids, block):
  """Pads the sequence to a multiple of `block`; the pad is a segment of its own, so real queries never see it."""
  length = q.shape[1]
  pad = -length % block
  if not pad:
    return q, k, v, segment_ids, length
  widths = ((0, 0), (0, pad), (0, 0), (0, 0))
  q, k, v = (jnp.pad(x, widths) for x in (q, k, v))
  segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)), constant_values=_PAD_SEGMENT)
  return q, k, v, segment_ids, length


def _block_size(length: int, largest: int = 128) -> int:
  """Largest power-of-two block <= `largest` that a short sequence does not need padding far beyond."""
  block = 16
  while block < largest and block < length:
    block *= 2
  return block


def _splash(q, k, v, segment_ids, *, causal: bool, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
  block = 128  # TPU lanes: splash tiles are whole multiples of 128
  q, k, v, segment_ids, length = _pad_to_blocks(q, k, v, segment_ids, block)
  padded, heads, head_dim = q.shape[1], q.shape[2], q.shape[3]
  one = masks.CausalMask((padded, padded)) if causal else masks.FullMask((padded, padded))
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  kernel = splash.make_splash_mha(masks.MultiHeadMask([one] * heads), block_sizes=sizes, head_shards=1,
                                  q_seq_shards=1, interpret=interpret)
  # Splash wants [N, L, H] per example and does not scale the queries.
  to_heads = lambda x: jnp.swapaxes(x, 1, 2)
  scaled = (q * (head_dim ** -0.5)).astype(q.dtype)
  out = jax.vmap(lambda qq, kk, vv, s: kernel(qq, kk, vv, segment_ids=splash.SegmentIds(q=s, kv=s)))(
      to_heads(scaled), to_heads(k), to_heads(v), segment_ids)
  return to_heads(out)[:, :length]


def _triton(q, k, v, segment_ids, *, causal: bool, interpret: bool):
  from jax.experimental.pallas.ops.gpu import attention as gpu_attention
  block = _block_size(q.shape[1])
  q, k, v, segment_ids, length = _pad_to_blocks(q, k, v, segment_ids, block)
  small = min(block, 32)
  sizes = gpu_attention.BlockSizes(block_q=block, block_k=block, block_q_dkv=small, block_kv_dkv=small,
                                   block_q_dq=small, block_kv_dq=small)
  out = gpu_attention.mha(q, k, v, segment_ids, sm_scale=q.shape[-1] ** -0.5, causal=causal,
                          block_sizes=sizes, interpret=interpret)
  return out[:, :length]


def describe(requested: str, platform: str) -> Optional[str]:
  """One line for the start-up log: which kernel each tower uses."""
  vit, decoder = resolve(requested, platform)
  return f"attention ({requested} on {platform}): ViT {vit}, decoder {decoder}"
