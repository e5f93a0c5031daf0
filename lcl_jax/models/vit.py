"""Vision encoder: ViT (pre-LN, layer-scale, stochastic depth; no class token by default), and attention pooling.

Options off by default reproduce the authors' open_clip ViT exactly (configs/lcl_vitb16_laion_openclip.py): a class
token, `ln_pre`, a bias-free patch embedding, exact GELU or QuickGELU, no layer-scale; the patch latents are the
patch tokens after the final LayerNorm, the class token dropped. `OpenClipAttentivePool` is the authors' pooling.
"""
from typing import Any, Optional

import einops
import flax.linen as nn
import jax.numpy as jnp

from lcl_jax import axes
from lcl_jax.models import attention, layers

Dtype = Any
ACT = (axes.ACT_IMAGES, axes.ACT_PATCHES, axes.ACT_EMBED)

# CLIP normalisation (docs/method.md section 5); images arrive as uint8 and are normalised on device.
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
  activation: str
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
    h = layers.Mlp(self.mlp_dim, self.activation, **kw, name="mlp")(h, ACT)
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
  class_token: bool = False   # open_clip: a learned token in front, with its own position; dropped from the output
  ln_pre: bool = False        # open_clip: LayerNorm after the position embedding, before the blocks
  patch_bias: bool = True     # open_clip's conv1 has no bias
  activation: str = "gelu_tanh"  # layers.ACTIVATIONS; open_clip: "gelu" (exact), its quick_gelu models "quick_gelu"
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
    x = layers.dense(self.width, axes.PATCH, axes.EMBED, dtype=self.dtype, param_dtype=self.param_dtype,
                     use_bias=self.patch_bias, name="patch_embed")(x)
    if self.class_token:
      cls = self.param("cls_token", layers.param_with_axes(nn.initializers.normal(0.02), (axes.POSITIONS, axes.EMBED)),
                       (1, self.width), self.param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (n, 1, self.width)), x], axis=1)
    pos = self.param("pos_embed", layers.param_with_axes(nn.initializers.normal(0.02),
                                                         (axes.POSITIONS, axes.EMBED)),
                     (self.num_patches + int(self.class_token), self.width), self.param_dtype)
    x = layers.constrain(x + pos.astype(self.dtype), ACT)
    if self.ln_pre:
      x = layers.layer_norm(dtype=self.dtype, param_dtype=self.param_dtype, name="ln_pre")(x)

    # Stochastic depth rises linearly with depth to drop_path_rate at the last block.
    rates = jnp.linspace(0.0, self.drop_path_rate, self.depth) if self.depth > 1 else jnp.zeros((1,))
    block_args = (self.num_heads, self.mlp_dim, self.layerscale_init, deterministic, self.attention, self.interpret,
                  self.activation, self.dtype, self.param_dtype)
    x = layers.apply_blocks(VitBlock, block_args, x, rates, depth=self.depth, remat=self.remat,
                            scan=self.scan_layers, per_layer_side=True)
    x = layers.layer_norm(dtype=self.dtype, param_dtype=self.param_dtype, name="ln_final")(x)
    return x[:, 1:] if self.class_token else x


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


class OpenClipAttentivePool(nn.Module):
  """The authors' AttentivePoolingProjection: one learned query, LayerNorms on query, keys and values (three of
  them), attention with biased q/k/v maps and a bias-free output map. z [N, K, D_v] -> v [N, D_e]. `project(z)` ->
  [N, K, D_e] is the value path (LayerNorm, value map, output map) applied to every patch: the authors' decoder reads
  it as the image latents."""
  out_features: int
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.nowrap
  def _proj(self, name, in_shape, out_shape, in_axes, out_axes, use_bias=True):
    return layers.Projection(in_shape, out_shape, in_axes, out_axes, use_bias=use_bias, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=name)

  def setup(self):
    if self.out_features % self.num_heads:
      raise ValueError(f"out_features {self.out_features} is not divisible by num_heads {self.num_heads}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.ln_q, self.ln_k, self.ln_v = (layers.layer_norm(**kw, name=n) for n in ("ln_q", "ln_k", "ln_v"))
    self.heads = (self.num_heads, self.out_features // self.num_heads)
    heads_axes = (axes.HEADS, axes.HEAD_DIM)
    self.query_map, self.key_map, self.value_map = (
        self._proj(n, (self.out_features,), self.heads, (axes.EMBED,), heads_axes) for n in ("query", "key", "value"))
    self.out = self._proj("out", self.heads, (self.out_features,), heads_axes, (axes.EMBED,), use_bias=False)
    self.query_token = self.param("query_token", layers.param_with_axes(nn.initializers.normal(0.02),
                                                                        (axes.POSITIONS, axes.EMBED)),
                                  (1, self.out_features), self.param_dtype)

  def _check(self, z):
    if z.shape[-1] != self.out_features:
      raise ValueError(f"OpenClipAttentivePool keeps the width ({self.out_features}), got {z.shape[-1]}: the "
                       "authors' configs pool at the ViT's width.")

  def __call__(self, z):
    self._check(z)
    q = self.ln_q(jnp.broadcast_to(self.query_token.astype(self.dtype), (z.shape[0], 1, z.shape[-1])))
    out = attention.dot_product_attention(self.query_map(q), self.key_map(self.ln_k(z)),
                                          self.value_map(self.ln_v(z)), kernel="xla")
    return self.out(out)[:, 0]

  def project(self, z):
    self._check(z)
    return self.out(self.value_map(self.ln_v(z)))


def vit_from_config(v, **kw):
  """The ViT of a config's `model.vit` section (a ConfigDict or the plain dict of an exported artefact; keys added
  later default to the model they replace). kw: attention, remat, dtype, param_dtype, ..."""
  return ViT(width=v["width"], depth=v["depth"], num_heads=v["num_heads"], mlp_dim=v["mlp_dim"],
             patch_size=v["patch_size"], image_size=v["image_size"], drop_path_rate=v["drop_path_rate"],
             layerscale_init=v["layerscale_init"], scan_layers=v.get("scan_layers", False),
             class_token=v.get("class_token", False), ln_pre=v.get("ln_pre", False),
             patch_bias=v.get("patch_bias", True), activation=v.get("activation", "gelu_tanh"), **kw)


def pool_from_config(c, **kw):
  """`model.pool`: "lcl_jax" (AttentionPool) or "open_clip" (the authors' OpenClipAttentivePool)."""
  kind = c.get("pool", "lcl_jax")
  if kind == "open_clip":
    return OpenClipAttentivePool(c["embed_dim"], c["pool_heads"], **kw)
  if kind != "lcl_jax":
    raise ValueError(f"model.pool={kind!r}: use 'lcl_jax' or 'open_clip'.")
  return AttentionPool(c["embed_dim"], c["pool_heads"], **kw)

