"""Building blocks shared by the ViT and the decoder, every parameter logically annotated."""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lcl_jax import axes
from lcl_jax.models import attention

Dtype = Any
default_kernel_init = nn.initializers.xavier_uniform()


def param_with_axes(init, names):
  return nn.with_logical_partitioning(init, names)


def constrain(x, names):
  """Logical sharding constraint on an activation; a no-op outside a mesh + rules context."""
  return nn.with_logical_constraint(x, names)


def layer_norm(*, dtype=jnp.float32, param_dtype=jnp.float32, name=None, epsilon=1e-5):
  """LayerNorm whose scale and bias carry the `norm` axis (always replicated)."""
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=param_with_axes(nn.initializers.ones, (axes.NORM,)),
      bias_init=param_with_axes(nn.initializers.zeros, (axes.NORM,)))


def dense(features, in_axis, out_axis, *, dtype, param_dtype, name=None, use_bias=True,
          kernel_init=default_kernel_init):
  return nn.Dense(
      features, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias, name=name,
      kernel_init=param_with_axes(kernel_init, (in_axis, out_axis)),
      bias_init=param_with_axes(nn.initializers.zeros, (out_axis,)))


class Projection(nn.Module):
  """A dense map kept in its true rank: x [..., *in] -> [..., *out] by einsum.

  Flax's DenseGeneral initialises a flattened 2-D kernel and reshapes it, which breaks logical
  constraints on rank-3 attention kernels when a mesh is active; this keeps shapes and names aligned.
  """
  in_shape: tuple
  out_shape: tuple
  in_axes: tuple
  out_axes: tuple
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    fan_in, fan_out = len(self.in_shape), len(self.out_shape)
    init = nn.initializers.xavier_uniform(in_axis=tuple(range(fan_in)),
                                          out_axis=tuple(range(fan_in, fan_in + fan_out)))
    kernel = self.param("kernel", param_with_axes(init, self.in_axes + self.out_axes),
                        self.in_shape + self.out_shape, self.param_dtype)
    letters = "abcdefgh"
    ins, outs = letters[:fan_in], letters[fan_in:fan_in + fan_out]
    y = jnp.einsum(f"...{ins},{ins}{outs}->...{outs}", x.astype(self.dtype), kernel.astype(self.dtype))
    if not self.use_bias:
      return y
    bias = self.param("bias", param_with_axes(nn.initializers.zeros, self.out_axes), self.out_shape,
                      self.param_dtype)
    return y + bias.astype(self.dtype)


class MultiHeadAttention(nn.Module):
  """Multi-head attention through one of the kernels of `attention.py`.

  Queries [..., T, D], keys/values [..., S, D_kv]; `segment_ids` [..., T] (self-attention) limits attention to
  equal ids, `causal` to earlier positions.
  """
  num_heads: int
  out_features: Optional[int] = None
  out_bias: bool = True
  kernel: str = "xla"
  causal: bool = False
  interpret: bool = False  # the Pallas kernels on CPU (tests)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_q, x_kv, segment_ids=None):
    width = x_q.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}.")
    head_dim = width // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    heads = (self.num_heads, head_dim)
    heads_axes = (axes.HEADS, axes.HEAD_DIM)

    def proj(name, x):
      in_axis = axes.EMBED if x.shape[-1] == width else axes.KV
      return Projection((x.shape[-1],), heads, (in_axis,), heads_axes, **kw, name=name)(x)

    q, k, v = proj("query", x_q), proj("key", x_kv), proj("value", x_kv)
    # The kernels want [B, T, N, H]: fold any extra leading dims into B.
    lead = q.shape[:-3]
    q, k, v = (a.reshape((-1,) + a.shape[-3:]) for a in (q, k, v))
    if segment_ids is not None:
      segment_ids = segment_ids.reshape((-1, segment_ids.shape[-1]))
    out = attention.dot_product_attention(q, k, v, kernel=self.kernel, causal=self.causal, segment_ids=segment_ids,
                                          interpret=self.interpret)
    out = out.reshape(lead + out.shape[1:])
    return Projection(heads, (self.out_features or width,), heads_axes, (axes.EMBED,), use_bias=self.out_bias, **kw,
                      name="out")(out)


# MLP activations: tanh-approximated GELU (ours), exact GELU (torch's nn.GELU, open_clip's default), QuickGELU
# (x * sigmoid(1.702 x), OpenAI CLIP and open_clip's `quick_gelu` models).
ACTIVATIONS = {
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
}


class Mlp(nn.Module):
  """Two-layer MLP, GELU by default (ACTIVATIONS)."""
  mlp_dim: int
  activation: str = "gelu_tanh"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, act_axes):
    width = x.shape[-1]
    h = dense(self.mlp_dim, axes.EMBED, axes.MLP, dtype=self.dtype,
              param_dtype=self.param_dtype, name="fc1")(x)
    h = constrain(ACTIVATIONS[self.activation](h), act_axes[:-1] + (axes.ACT_MLP,))
    return dense(width, axes.MLP, axes.EMBED, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="fc2")(h)


class LayerScale(nn.Module):
  """Per-channel learned residual scale (Touvron et al., CaiT)."""
  init_value: float
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", param_with_axes(nn.initializers.constant(self.init_value),
                                                (axes.NORM,)), (x.shape[-1],), self.param_dtype)
    return x * scale.astype(x.dtype)


def apply_blocks(block_cls, block_args, x, side, *, depth, remat, scan, per_layer_side):
  """Runs `depth` blocks `block_cls(*block_args)(x, side) -> (x, None)` inside the calling module.

  scan=True stacks the blocks' params on a leading `layers` axis and runs them with nn.scan: one compiled body,
  and with remat only each block's input is kept for the backward pass (unrolled remat does not bound memory
  under XLA's schedulers; measured with tools.plan). `side` is per layer ([depth, ...], e.g. drop rates) when
  per_layer_side, else the same for every block (e.g. the segment ids).
  """
  # Inside scan the loop already keeps recomputation apart; unrolled, CSE must not merge it back.
  cls = nn.remat(block_cls, prevent_cse=not scan) if remat else block_cls
  if scan:
    stack = nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                    in_axes=0 if per_layer_side else nn.broadcast, length=depth,
                    metadata_params={nn.PARTITION_NAME: axes.LAYERS})
    return stack(*block_args, name="blocks")(x, side)[0]
  for i in range(depth):
    x = cls(*block_args, name=f"block_{i}")(x, side[i] if per_layer_side else side)[0]
  return x


def drop_path(module: nn.Module, x, rate, deterministic: bool):
  """Stochastic depth: drop the whole residual branch per example with probability `rate` (may be traced)."""
  if deterministic or (isinstance(rate, float) and rate == 0.0):
    return x
  keep = 1.0 - rate
  rng = module.make_rng("dropout")
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  # Scale in x's dtype: a float32 (traced) rate must not promote a bfloat16 residual stream.
  return x * (mask / keep).astype(x.dtype)
