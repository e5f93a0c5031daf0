"""Causal transformer decoder (OPT-125M shape by default): pre-LN blocks, learned positions, LM head."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lcl_jax import axes
from lcl_jax.models import layers

Dtype = Any
ACT = (axes.ACT_BATCH, axes.ACT_SEQ, axes.ACT_EMBED)


def causal_segment_mask(segment_ids):
  """[B, L] -> bool [B, 1, L, L]: query i sees key j iff j <= i and both are in the same segment."""
  length = segment_ids.shape[-1]
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
  return (same & causal)[:, None]


class DecoderBlock(nn.Module):
  num_heads: int
  mlp_dim: int
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x, mask):
    """(x [B, L, D], mask) -> (x, None), the shape nn.scan wants."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.layer_norm(**kw, name="ln_attn")(x)
    x = layers.constrain(x + layers.MultiHeadAttention(self.num_heads, **kw, name="attn")(h, h, mask), ACT)
    h = layers.layer_norm(**kw, name="ln_mlp")(x)
    return layers.constrain(x + layers.Mlp(self.mlp_dim, **kw, name="mlp")(h, ACT), ACT), None


class Decoder(nn.Module):
  """Embeds tokens, runs the causal stack over (possibly image-substituted) embeddings, projects to logits.

  Used in two calls so the LCL model can write image latents between them:
    embed(tokens) -> [B, L, D];  __call__(x, segment_ids, positions) -> hidden [B, L, D];  logits(hidden).
  """
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  vocab_size: int
  max_len: int
  tie_embeddings: bool = True
  remat: bool = False
  scan_layers: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.token_embed = nn.Embed(
        self.vocab_size, self.width, dtype=self.dtype, param_dtype=self.param_dtype,
        embedding_init=layers.param_with_axes(nn.initializers.normal(0.02), (axes.VOCAB, axes.EMBED)))
    self.pos_embed = self.param(
        "pos_embed", layers.param_with_axes(nn.initializers.normal(0.02), (axes.POSITIONS, axes.EMBED)),
        (self.max_len, self.width), self.param_dtype)
    self.ln_final = layers.layer_norm(dtype=self.dtype, param_dtype=self.param_dtype)
    if not self.tie_embeddings:
      self.lm_head = layers.dense(self.vocab_size, axes.EMBED, axes.VOCAB, dtype=self.dtype,
                                  param_dtype=self.param_dtype, use_bias=False)

  def embed(self, tokens):
    """int [B, L] -> [B, L, D]."""
    return layers.constrain(self.token_embed(tokens), ACT)

  def __call__(self, x, segment_ids, positions):
    """x [B, L, D] input embeddings -> final-LayerNorm hidden states [B, L, D]."""
    if x.shape[1] > self.max_len:
      raise ValueError(f"Sequence length {x.shape[1]} exceeds the decoder's max_len {self.max_len}.")
    x = x + jnp.take(self.pos_embed, positions, axis=0).astype(self.dtype)
    x = layers.constrain(x, ACT)
    mask = causal_segment_mask(segment_ids)
    x = self._blocks(x, mask)
    return self.ln_final(x)

  @nn.compact
  def _blocks(self, x, mask):
    return layers.apply_blocks(DecoderBlock, (self.num_heads, self.mlp_dim, self.dtype, self.param_dtype), x, mask,
                               depth=self.depth, remat=self.remat, scan=self.scan_layers, per_layer_side=False)

  def logits(self, hidden):
    """[..., D] -> [..., V] in float32 (the softmax that follows is float32)."""
    if self.tie_embeddings:
      out = self.token_embed.attend(hidden)
    else:
      out = self.lm_head(hidden)
    return out.astype(jnp.float32)
