"""Causal transformer decoder (OPT-125M shape by default): pre-LN blocks, learned positions, LM head.

With `lm_head_norm` it is the authors' CLIP-shaped text tower instead: no final LayerNorm shared by every reader of
the stack's output; the LM head is LayerNorm + Linear of its own (their `lm_head`), and the LCL model's context
head normalises the same output separately (their `text.ln_final`, models/lcl.py)."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lcl_jax import axes
from lcl_jax.models import layers

Dtype = Any
ACT = (axes.ACT_BATCH, axes.ACT_SEQ, axes.ACT_EMBED)


class LMHead(nn.Module):
  """An untied LM head without bias, [D, V]; `kernel` is exposed for the target-only loss (which applies it to
  `Decoder.lm_input(hidden)`)."""
  width: int
  vocab_size: int
  dtype: Dtype
  param_dtype: Dtype

  def setup(self):
    self.kernel = self.param("kernel", layers.param_with_axes(layers.default_kernel_init, (axes.EMBED, axes.VOCAB)),
                             (self.width, self.vocab_size), self.param_dtype)

  def __call__(self, hidden):
    return jnp.einsum("...d,dv->...v", hidden.astype(self.dtype), self.kernel.astype(self.dtype))


class DecoderBlock(nn.Module):
  num_heads: int
  mlp_dim: int
  activation: str
  attention: str
  interpret: bool
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x, segment_ids):
    """(x [B, L, D], segment_ids [B, L]) -> (x, None), the shape nn.scan wants."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.layer_norm(**kw, name="ln_attn")(x)
    attn = layers.MultiHeadAttention(self.num_heads, kernel=self.attention, causal=True, interpret=self.interpret,
                                     **kw, name="attn")
    x = layers.constrain(x + attn(h, h, segment_ids), ACT)
    h = layers.layer_norm(**kw, name="ln_mlp")(x)
    return layers.constrain(x + layers.Mlp(self.mlp_dim, self.activation, **kw, name="mlp")(h, ACT), ACT), None


class Decoder(nn.Module):
  """Embeds tokens, runs the causal stack over (possibly image-substituted) embeddings, projects to logits.

  Used in two calls so the LCL model can write image latents between them:
    embed(tokens) -> [B, L, D];  __call__(x, segment_ids, positions) -> hidden [B, L, D];  logits(hidden).
  `hidden` is what the context head reads; the LM head reads `lm_input(hidden)` (the same array unless
  lm_head_norm).
  """
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  vocab_size: int
  max_len: int
  tie_embeddings: bool = True
  lm_head_norm: bool = False  # the authors' layout: LM head = LayerNorm + Linear, no shared final LayerNorm
  activation: str = "gelu_tanh"  # layers.ACTIVATIONS; the authors' text tower: "gelu" (exact)
  remat: bool = False
  scan_layers: bool = False
  attention: str = "xla"   # kernel (models/attention.py); causal within each segment
  interpret: bool = False  # Pallas kernels in interpret mode (CPU tests)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.token_embed = nn.Embed(
        self.vocab_size, self.width, dtype=self.dtype, param_dtype=self.param_dtype,
        embedding_init=layers.param_with_axes(nn.initializers.normal(0.02), (axes.VOCAB, axes.EMBED)))
    self.pos_embed = self.param(
        "pos_embed", layers.param_with_axes(nn.initializers.normal(0.02), (axes.POSITIONS, axes.EMBED)),
        (self.max_len, self.width), self.param_dtype)
    if self.lm_head_norm:
      if self.tie_embeddings:
        raise ValueError("decoder.lm_head_norm (the authors' separate LM head) needs tie_embeddings=False.")
      self.lm_head_norm_layer = layers.layer_norm(dtype=self.dtype, param_dtype=self.param_dtype,
                                                  name="lm_head_norm")
    else:
      self.ln_final = layers.layer_norm(dtype=self.dtype, param_dtype=self.param_dtype)
    if not self.tie_embeddings:
      self.lm_head = LMHead(self.width, self.vocab_size, dtype=self.dtype, param_dtype=self.param_dtype)

  def embed(self, tokens):
    """int [B, L] -> [B, L, D]."""
    return layers.constrain(self.token_embed(tokens), ACT)

  def __call__(self, x, segment_ids, positions):
    """x [B, L, D] input embeddings -> hidden states [B, L, D] (after the final LayerNorm unless lm_head_norm)."""
    if x.shape[1] > self.max_len:
      raise ValueError(f"Sequence length {x.shape[1]} exceeds the decoder's max_len {self.max_len}.")
    x = x + jnp.take(self.pos_embed, positions, axis=0).astype(self.dtype)
    x = layers.constrain(x, ACT)
    x = self._blocks(x, segment_ids)
    return x if self.lm_head_norm else self.ln_final(x)

  def lm_input(self, hidden):
    """hidden [..., D] -> what the LM head matrix multiplies."""
    return self.lm_head_norm_layer(hidden) if self.lm_head_norm else hidden

  @nn.compact
  def _blocks(self, x, segment_ids):
    args = (self.num_heads, self.mlp_dim, self.activation, self.attention, self.interpret, self.dtype, self.param_dtype)
    return layers.apply_blocks(DecoderBlock, args, x, segment_ids, depth=self.depth, remat=self.remat,
                               scan=self.scan_layers, per_layer_side=False)

  def head_matrix(self):
    """The LM head as a [D, V] matrix in the compute dtype (logits = hidden @ head), sharded like the parameter:
    the target-only loss gathers it once before its loop and reduce-scatters its gradient (losses.py)."""
    head = self.token_embed.embedding.T if self.tie_embeddings else self.lm_head.kernel
    return jnp.asarray(head, self.dtype)

  def logits(self, hidden):
    """hidden [..., D] -> [..., V] in float32 (the softmax that follows is float32)."""
    hidden = self.lm_input(hidden)
    if self.tie_embeddings:
      out = self.token_embed.attend(hidden)
    else:
      out = self.lm_head(hidden)
    return out.astype(jnp.float32)
