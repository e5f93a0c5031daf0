"""Vision encoder: ViT without class token (pre-LN, layer-scale, stochastic depth), and attention pooling."""
from typing import Any, Optional

import einops
import flax.linen as nn
import jax.numpy as jnp

from lcl_jax import axes
from lcl_jax.models import layers

Dtype = Any
ACT = (axes.ACT_IMAGES, axes.ACT_PATCHES, axes.ACT_EMBED)

# CLIP normalisation (method.md section 5); images arrive as uint8 and are normalised on device.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_images(images, dtype):
  """uint8 [N, H, W, 3] -> CLIP-normalised float [N, H, W, 3]."""
  x = images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
  return x.astype(dtype)


class VitBlock(nn.Module):
  """Pre-LN block with layer-scale and stochastic depth: (x [N, K, D], drop rate []) -> (x, None), the shape
  nn.scan wants."""
  num_heads: int
  mlp_dim: int
  layerscale_init: Optional[float]
  deterministic: bool
  attention: str
  interpret: bool
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x, drop_rate):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def branch(h, name):
      if self.layerscale_init is not None:
        h = layers.LayerScale(self.layerscale_init, self.param_dtype, name=f"ls_{name}")(h)
      return layers.drop_path(self, h, drop_rate, self.deterministic)

    h = layers.layer_norm(**kw, name="ln_attn")(x)
    h = layers.MultiHeadAttention(self.num_heads, kernel=self.attention, interpret=self.interpret, **kw,
                                  name="attn")(h, h)
    x = layers.constrain(x + branch(h, "attn"), ACT)
    h = layers.layer_norm(**kw, name="ln_mlp")(x)
    h = layers.Mlp(self.mlp_dim, **kw, name="mlp")(h, ACT)
    return layers.constrain(x + branch(h, "mlp"), ACT), None


class ViT(nn.Module):
  """images uint8 [N, H, W, 3] -> patch latents z [N, K, D_v] (after the final LayerNorm)."""
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int
  image_size: int
  drop_path_rate: float = 0.0
  layerscale_init: Optional[float] = 0.1
  remat: bool = False
  scan_layers: bool = False
  attention: str = "xla"   # kernel (models/attention.py); no mask: every patch sees every patch
  interpret: bool = False  # Pallas kernels in interpret mode (CPU tests)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def num_patches(self):
    return (self.image_size // self.patch_size) ** 2

  @nn.compact
  def __call__(self, images, *, deterministic: bool = True):
    n, h, w, _ = images.shape
    if (h, w) != (self.image_size, self.image_size):
      raise ValueError(f"ViT expects {self.image_size}x{self.image_size} images, got {h}x{w}.")
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}.")
    x = normalize_images(images, self.dtype)
    # Patches as a Dense over flattened pixels: the same maths as a strided conv, clearer axes.
    x = einops.rearrange(x, "n (gh p) (gw q) c -> n (gh gw) (p q c)", p=self.patch_size, q=self.patch_size)
    x = layers.dense(self.width, axes.PATCH, axes.EMBED, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="patch_embed")(x)
    pos = self.param("pos_embed", layers.param_with_axes(nn.initializers.normal(0.02),
                                                         (axes.POSITIONS, axes.EMBED)),
                     (self.num_patches, self.width), self.param_dtype)
    x = layers.constrain(x + pos.astype(self.dtype), ACT)

    # Stochastic depth rises linearly with depth to drop_path_rate at the last block.
    rates = jnp.linspace(0.0, self.drop_path_rate, self.depth) if self.depth > 1 else jnp.zeros((1,))
    block_args = (self.num_heads, self.mlp_dim, self.layerscale_init, deterministic, self.attention, self.interpret,
                  self.dtype, self.param_dtype)
    x = layers.apply_blocks(VitBlock, block_args, x, rates, depth=self.depth, remat=self.remat,
                            scan=self.scan_layers, per_layer_side=True)
    return layers.layer_norm(dtype=self.dtype, param_dtype=self.param_dtype, name="ln_final")(x)


class AttentionPool(nn.Module):
  """One learned query attending over the patch latents: z [N, K, D_v] -> v [N, D_e]."""
  out_features: int
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    query = self.param("query", layers.param_with_axes(nn.initializers.normal(0.02),
                                                       (axes.POSITIONS, axes.EMBED)),
                       (1, z.shape[-1]), self.param_dtype)
    q = jnp.broadcast_to(query.astype(self.dtype), (z.shape[0], 1, z.shape[-1]))
    out = layers.MultiHeadAttention(self.num_heads, out_features=self.out_features,
                                    dtype=self.dtype, param_dtype=self.param_dtype,
                                    name="attn")(q, z)
    return out[:, 0]
