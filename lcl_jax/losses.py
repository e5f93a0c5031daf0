"""LCL losses (method.md section 4): gathered bidirectional contrastive loss and next-token loss. jax only.

The contrastive loss never builds the global N x N logits on one device: under a mesh, each data shard computes
its local rows against all-gathered columns (`shard_map` + `all_gather`, gradients flow back through the gather as
a reduce-scatter), which equals the dense global loss.
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

# A finite "minus infinity": masked columns vanish from the softmax without NaNs in all-masked rows.
_NEG = -1e9


def _l2_normalize(x):
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def _contrastive_sums(v, t, valid, v_all, t_all, valid_all, row_offset, scale):
  """Loss and accuracy sums for local rows [n] against global columns [N]. All float32."""
  n = v.shape[0]
  target = row_offset + jnp.arange(n)                                   # column of each row's positive
  col_mask = valid_all[None, :]
  logits_i2t = jnp.where(col_mask, scale * v @ t_all.T, _NEG)           # image anchors vs all contexts
  logits_t2i = jnp.where(col_mask, scale * t @ v_all.T, _NEG)           # context anchors vs all images

  def ce_and_hit(logits):
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, target[:, None], axis=1)[:, 0]
    hit = jnp.argmax(logits, axis=-1) == target
    return nll, hit

  nll_i2t, hit_i2t = ce_and_hit(logits_i2t)
  nll_t2i, hit_t2i = ce_and_hit(logits_t2i)
  w = valid.astype(jnp.float32)
  return dict(loss=jnp.sum(w * 0.5 * (nll_i2t + nll_t2i)),
              hit_i2t=jnp.sum(w * hit_i2t), hit_t2i=jnp.sum(w * hit_t2i), count=jnp.sum(w))


def contrastive_loss(v, t, valid, logit_scale, *, max_logit_scale: float,
                     mesh: Optional[Mesh] = None, data_axes: Sequence[str] = ("data", "fsdp")):
  """Bidirectional InfoNCE between v and t over every valid image of the global batch.

  v, t [N, D] (any float dtype; computed in float32), valid bool [N], logit_scale [] (log of the scale,
  clamped at max_logit_scale). Invalid slots are neither anchors nor negatives.
  Returns (loss, metrics); loss is the mean over valid images (0 when there are none).
  """
  v = _l2_normalize(v.astype(jnp.float32))
  t = _l2_normalize(t.astype(jnp.float32))
  scale = jnp.exp(jnp.minimum(logit_scale.astype(jnp.float32), max_logit_scale))

  if mesh is None or all(mesh.shape[a] == 1 for a in data_axes):
    sums = _contrastive_sums(v, t, valid, v, t, valid, 0, scale)
  else:
    axis = tuple(data_axes)

    def local(v, t, valid, scale):
      gather = lambda x: jax.lax.all_gather(x, axis, tiled=True)
      offset = jax.lax.axis_index(axis) * v.shape[0]
      sums = _contrastive_sums(v, t, valid, gather(v), gather(t), gather(valid), offset, scale)
      return jax.tree.map(lambda s: jax.lax.psum(s, axis), sums)

    rows = P(axis)
    sums = jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, rows, P()), out_specs=P())(
        v, t, valid, scale)

  count = sums["count"]
  denom = jnp.maximum(count, 1.0)
  loss = sums["loss"] / denom
  metrics = dict(contrastive_loss=loss, contrastive_acc_i2t=sums["hit_i2t"] / denom,
                 contrastive_acc_t2i=sums["hit_t2i"] / denom, num_valid_images=count, logit_scale=scale)
  return loss, metrics


def generation_targets(tokens, segment_ids, special_tokens):
  """Next-token targets and weights for [B, L] inputs -> (targets [B, L-1], weights f32 [B, L-1]).

  A target counts when it is a text token, `<boi>` or `</s>` in the same segment as the token predicting it;
  `<img>`, `<eoi>`, `<pad>` (and `<s>`) targets weigh zero.
  """
  targets = tokens[:, 1:]
  first_text_id = max(special_tokens.values()) + 1
  wanted = ((targets >= first_text_id) | (targets == special_tokens["boi"])
            | (targets == special_tokens["eos"]))
  same_segment = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0)
  return targets, (wanted & same_segment).astype(jnp.float32)


def next_token_loss(logits, tokens, segment_ids, special_tokens):
  """Mean next-token cross-entropy over all weighted targets of the (global) batch.

  logits [B, L, V] (position i predicts token i + 1), tokens / segment_ids int [B, L].
  """
  targets, weights = generation_targets(tokens, segment_ids, special_tokens)
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  count = jnp.sum(weights)
  loss = jnp.sum(nll * weights) / jnp.maximum(count, 1.0)
  return loss, dict(generation_loss=loss, num_text_targets=count)


def next_token_loss_chunked(hidden, logits_fn, tokens, segment_ids, special_tokens, num_chunks: int):
  """next_token_loss without ever holding the [B, L, V] logits: the sequence is cut into `num_chunks` pieces and
  each piece's logits are recomputed in the backward pass (jax.checkpoint), so peak memory is [B, L/n, V].

  hidden [B, L, D] (position i predicts token i + 1); logits_fn: [..., D] -> [..., V] float32.
  """
  b, length, d = hidden.shape
  if (length - 1) % num_chunks and length % num_chunks:
    raise ValueError(f"seq_len {length} does not split into {num_chunks} LM-loss chunks.")
  targets, weights = generation_targets(tokens, segment_ids, special_tokens)
  # Pad the L - 1 predicting positions to L so every chunk has the same static size; the pad weighs 0.
  targets = jnp.pad(targets, ((0, 0), (0, 1)))
  weights = jnp.pad(weights, ((0, 0), (0, 1)))
  split = lambda x: jnp.moveaxis(x.reshape((b, num_chunks, length // num_chunks) + x.shape[2:]), 1, 0)

  @jax.checkpoint
  def piece(h, tgt, w):
    logp = jax.nn.log_softmax(logits_fn(h).astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * w)

  total = jnp.sum(jax.lax.map(lambda xs: piece(*xs), (split(hidden), split(targets), split(weights))))
  count = jnp.sum(weights)
  loss = total / jnp.maximum(count, 1.0)
  return loss, dict(generation_loss=loss, num_text_targets=count)


def lcl_loss(outputs, batch, loss_config, special_tokens, *, mesh=None, data_axes=("data", "fsdp"),
             logits_fn=None):
  """L = lambda * L_con + w_gen * L_gen from the model outputs.

  A weight of 0 switches its term off (the paper's two ablations). The contrastive metrics are reported
  either way (they are cheap and show the generation-only collapse); the LM logits are only needed when
  the generation weight is non-zero. With `logits_fn` and `loss_config.lm_loss_chunks` > 1 the LM head runs
  chunk by chunk on `outputs["hidden"]` instead of on full logits.
  """
  con, metrics = contrastive_loss(outputs["v"], outputs["t"], outputs["contrastive_valid"],
                                  outputs["logit_scale"], max_logit_scale=loss_config["max_logit_scale"],
                                  mesh=mesh, data_axes=data_axes)
  total = loss_config["contrastive_weight"] * con
  if loss_config["generation_weight"]:
    if outputs.get("logits") is None:
      gen, m = next_token_loss_chunked(outputs["hidden"], logits_fn, batch["tokens"], batch["segment_ids"],
                                       special_tokens, loss_config["lm_loss_chunks"])
    else:
      gen, m = next_token_loss(outputs["logits"], batch["tokens"], batch["segment_ids"], special_tokens)
    total = total + loss_config["generation_weight"] * gen
    metrics.update(m)
  metrics["loss"] = total
  return total, metrics
