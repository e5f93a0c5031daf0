"""The LCL model: ViT latents written into the decoder's interleaved sequence; v and t for the contrastive loss.

Batch contract (docs/method.md section 6): the leading dims of `tokens` [B, L] and `images` [N, H, W, 3] split into
`num_chunks` contiguous, self-contained chunks; within a chunk the j-th image span in row-major token order
belongs to the j-th image slot of that chunk. All indexing below is per chunk with static shapes.
"""
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from lcl_jax import axes
from lcl_jax.models import attention, layers
from lcl_jax.models.decoder import Decoder
from lcl_jax.models.vit import pool_from_config, vit_from_config

Dtype = Any


def place_image_latents(tokens, embeds, latents, img_id, num_chunks):
  """Writes each image's K latents over the `<img>` placeholders of its span.

  tokens [B, L]; embeds [B, L, D]; latents [N, K, D] -> [B, L, D]. The k-th `<img>` of a chunk (row-major)
  takes the k-th latent of that chunk's flattened [N/C * K, D] latents: spans are whole and in image order.
  """
  b, length, d = embeds.shape
  tok = tokens.reshape(num_chunks, -1)                                  # [C, T]
  lat = latents.reshape(num_chunks, -1, d)                              # [C, N/C * K, D]
  is_img = tok == img_id
  idx = jnp.clip(jnp.cumsum(is_img, axis=1) - 1, 0, lat.shape[1] - 1)   # [C, T]
  gathered = jnp.take_along_axis(lat, idx[..., None], axis=1)           # [C, T, D]
  gathered = gathered.reshape(b, length, d).astype(embeds.dtype)
  return jnp.where((tokens == img_id)[..., None], gathered, embeds)


def boi_index(tokens, boi_id, num_chunks, images_per_chunk):
  """Flat in-chunk position of each image slot's `<boi>`.

  tokens [B, L] -> (pos int [C, N/C], found bool [C, N/C]); pos indexes the chunk's flattened [T] tokens.
  """
  tok = tokens.reshape(num_chunks, -1)
  count = jnp.cumsum(tok == boi_id, axis=1)                             # monotone: # of <boi> so far
  wanted = jnp.arange(1, images_per_chunk + 1)
  pos = jax.vmap(lambda c: jnp.searchsorted(c, wanted, side="left"))(count)
  found = wanted[None, :] <= count[:, -1:]
  return jnp.minimum(pos, tok.shape[1] - 1), found


def is_text(tokens, special_tokens):
  """bool, tokens' shape: not one of the special ids (which need not be contiguous: the authors' CLIP ids are 0 and
  49406-49410)."""
  return ~jnp.isin(tokens, jnp.asarray(sorted(set(special_tokens.values())), tokens.dtype))


def text_before_in_segment(tokens, positions, special_tokens):
  """int [B, L]: how many text tokens precede each position within its own segment."""
  is_text_ = is_text(tokens, special_tokens).astype(jnp.int32)
  before = jnp.cumsum(is_text_, axis=1) - is_text_                       # exclusive, whole row
  start = jnp.arange(tokens.shape[1])[None, :] - positions              # segment start per position
  return before - jnp.take_along_axis(before, jnp.maximum(start, 0), axis=1)


class LCL(nn.Module):
  """batch -> dict(logits [B, L, V] f32 | None, hidden [B, L, D_lm], lm_head [D_lm, V], v [N, D_e] f32,
  t [N, D_e] f32, contrastive_valid [N], logit_scale []). `hidden` (the LM head's input) and `lm_head` let the
  loss run the LM head on target positions only (training passes compute_logits=False)."""
  config: Mapping  # the model section of the config (ConfigDict or dict)

  def setup(self):
    c = self.config
    dtype, pdtype = jnp.dtype(c["dtype"]), jnp.dtype(c["param_dtype"])
    v, d = c["vit"], c["decoder"]
    vit_kernel, decoder_kernel = attention.resolve(c.get("attention", "auto"), jax.default_backend())
    self.vit = vit_from_config(v, remat=v["remat"], attention=vit_kernel, dtype=dtype, param_dtype=pdtype)
    self.pool = pool_from_config(c, dtype=dtype, param_dtype=pdtype)
    # The authors' decoder reads the pool's value path as image latents (OpenClipAttentivePool.project); ours maps
    # the patch latents with a Linear of its own.
    self.latents_from_pool = c.get("pool", "lcl_jax") == "open_clip"
    if self.latents_from_pool and c["embed_dim"] != d["width"]:
      raise ValueError(f"model.pool='open_clip' feeds the pool's projection (width embed_dim={c['embed_dim']}) to "
                       f"the decoder, so embed_dim must equal model.decoder.width={d['width']}.")
    self.decoder = Decoder(width=d["width"], depth=d["depth"], num_heads=d["num_heads"],
                           mlp_dim=d["mlp_dim"], vocab_size=d["vocab_size"], max_len=d["max_len"],
                           tie_embeddings=d["tie_embeddings"], lm_head_norm=d.get("lm_head_norm", False),
                           activation=d.get("activation", "gelu_tanh"), remat=d["remat"],
                           scan_layers=d["scan_layers"], attention=decoder_kernel, dtype=dtype, param_dtype=pdtype)
    if not self.latents_from_pool:
      self.image_proj = layers.dense(d["width"], axes.KV, axes.EMBED, dtype=dtype, param_dtype=pdtype)
    # The context head, LayerNorm + projection to D_e (the authors' text.ln_final and bias-free text_projection).
    self.context_norm = layers.layer_norm(dtype=dtype, param_dtype=pdtype)
    self.context_proj = layers.dense(c["embed_dim"], axes.EMBED, axes.KV, dtype=dtype, param_dtype=pdtype,
                                     use_bias=c.get("context_proj_bias", True))
    self.logit_scale = self.param(
        "logit_scale", layers.param_with_axes(nn.initializers.constant(c["logit_scale_init"]), ()),
        (), pdtype)

  def encode_images(self, images, deterministic=True):
    """uint8 [N, H, W, 3] -> (patch latents z [N, K, D_v], pooled v [N, D_e] f32)."""
    z = self.vit(images, deterministic=deterministic)
    return z, self.pool(z).astype(jnp.float32)

  def context_vectors(self, tokens, segment_ids, positions, boi_position):
    """Text-only rows -> t [B, D_e] f32 read at `boi_position` [B] (rows like `<s> prompt <boi>`): the decoder as
    a text encoder for zero-shot classification and retrieval."""
    hidden = self.decoder(self.decoder.embed(tokens), segment_ids, positions)
    h = jnp.take_along_axis(hidden, boi_position[:, None, None], axis=1)[:, 0]
    return self.context_proj(self.context_norm(h)).astype(jnp.float32)

  def _authors_context_rule(self, tokens, positions, pos, n, num_chunks):
    """bool [N]: the authors' code drops only a `<boi>` that opens its sequence (their image-first LAION pair,
    `<boi> ... caption </s>`, has no `<s>`). Our segments all open with `<s>`, so the same rule here drops a `<boi>`
    with nothing but that `<s>` before it in its segment. (Their MMC4 rows open with `<s>`, so their code keeps an
    MMC4 document's leading image with `<s>` as its only context; the segment's source is not in the batch, and
    this rule drops it too.)"""
    tok = tokens.reshape(num_chunks, -1)
    seg_pos = jnp.take_along_axis(positions.reshape(num_chunks, -1), pos, axis=1)
    opener = jnp.take_along_axis(tok, jnp.maximum(pos - seg_pos, 0), axis=1)
    before = seg_pos - (opener == self.config["special_tokens"]["bos"]).astype(seg_pos.dtype)
    return (before > 0).reshape(n)

  def __call__(self, batch, *, num_chunks: int = 1, train: bool = False, compute_logits: bool = True):
    tokens, segment_ids, positions = batch["tokens"], batch["segment_ids"], batch["positions"]
    images, image_valid = batch["images"], batch["image_valid"]
    st = self.config["special_tokens"]
    n = images.shape[0]
    if tokens.shape[0] % num_chunks or n % num_chunks:
      raise ValueError(f"rows ({tokens.shape[0]}) and image slots ({n}) must both divide into "
                       f"num_chunks={num_chunks}.")

    z, v = self.encode_images(images, deterministic=not train)
    z = layers.constrain(z, (axes.ACT_IMAGES, axes.ACT_PATCHES, axes.ACT_EMBED))
    latents = self.pool.project(z) if self.latents_from_pool else self.image_proj(z)  # [N, K, D_lm]
    x = place_image_latents(tokens, self.decoder.embed(tokens), latents, st["img"], num_chunks)
    hidden = self.decoder(x, segment_ids, positions)                    # [B, L, D_lm]

    # Context vector t_i: decoder output at image i's <boi>, which sees only what precedes the image.
    pos, found = boi_index(tokens, st["boi"], num_chunks, n // num_chunks)
    h_chunks = hidden.reshape(num_chunks, -1, hidden.shape[-1])
    h_boi = jnp.take_along_axis(h_chunks, pos[..., None], axis=1).reshape(n, -1)
    t = self.context_proj(self.context_norm(h_boi)).astype(jnp.float32)

    if self.config["require_text_context"]:
      ctx = text_before_in_segment(tokens, positions, st).reshape(num_chunks, -1)
      has_context = jnp.take_along_axis(ctx, pos, axis=1).reshape(n) > 0
    else:
      has_context = self._authors_context_rule(tokens, positions, pos, n, num_chunks)
    valid = image_valid & found.reshape(n) & has_context

    logits = None
    if compute_logits:
      logits = layers.constrain(self.decoder.logits(hidden), (axes.ACT_BATCH, axes.ACT_SEQ, axes.ACT_VOCAB))
    return dict(logits=logits, hidden=self.decoder.lm_input(hidden), lm_head=self.decoder.head_matrix(), v=v, t=t,
                contrastive_valid=valid, logit_scale=self.logit_scale.astype(jnp.float32))
