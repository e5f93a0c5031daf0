"""LCL losses (docs/method.md section 4): gathered bidirectional contrastive loss and next-token loss. jax (flax only
for logical sharding constraints).

The contrastive loss never builds the global N x N logits on one device: under a mesh, each data shard computes
its local rows against all-gathered columns (`shard_map` + `all_gather`, gradients flow back through the gather as
a reduce-scatter), which equals the dense global loss.
"""
import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from lcl_jax import axes
from lcl_jax.models.lcl import is_text

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


def contrastive_loss(v, t, valid, logit_scale, *, mesh: Optional[Mesh] = None,
                     data_axes: Sequence[str] = ("data", "fsdp")):
  """Bidirectional InfoNCE between v and t over every valid image of the global batch.

  v, t [N, D] (any float dtype; computed in float32), valid bool [N], logit_scale [] (log of the scale, used as it
  is: the train step clamps the parameter after each update, `clamp_logit_scale`). Invalid slots are neither
  anchors nor negatives. Returns (loss, metrics); loss is the mean over valid images (0 when there are none).
  """
  v = _l2_normalize(v.astype(jnp.float32))
  t = _l2_normalize(t.astype(jnp.float32))
  scale = jnp.exp(logit_scale.astype(jnp.float32))

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


def clamp_logit_scale(params, max_logit_scale: float):
  """The authors' clamp of the logit-scale parameter to [0, max_logit_scale] after each update (scale 1 to 100).
  Clamping the parameter, not its use in the loss, keeps the gradient live at the bound: a value there still
  moves under a gradient that lowers it (a forward `min(s, max)` has gradient 0 above the bound, for ever)."""
  if "logit_scale" not in params:
    return params
  return dict(params, logit_scale=jnp.clip(params["logit_scale"], 0.0, max_logit_scale))


def generation_targets(tokens, segment_ids, special_tokens):
  """Next-token targets and weights for [B, L] inputs -> (targets [B, L-1], weights f32 [B, L-1]).

  A target counts when it is a text token, `<boi>` or `</s>` in the same segment as the token predicting it;
  `<img>`, `<eoi>`, `<pad>`, `<s>` and `<unk>` targets weigh zero (text: any id not in `special_tokens`).
  """
  targets = tokens[:, 1:]
  wanted = (is_text(targets, special_tokens) | (targets == special_tokens["boi"])
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


def _sort_targets_first(weights, num_chunks: int, block_size: int):
  """Per chunk, the positions with a target first (stable), padded to whole blocks.

  weights f32 [B, L] -> (order int [C, nb * bs] indexing the chunk's flat [T] positions, active int []: blocks that
  hold every target of the fullest chunk). Pad entries point at position 0 and are weighted 0 by the caller.
  """
  w = weights.reshape(num_chunks, -1)
  t = w.shape[1]
  order = jnp.argsort(w <= 0, axis=1, stable=True).astype(jnp.int32)
  blocks = -(-t // block_size)
  order = jnp.pad(order, ((0, 0), (0, blocks * block_size - t)))
  count = jnp.sum(w > 0, axis=1)
  active = (jnp.max(count) + block_size - 1) // block_size   # same for every chunk: one loop under SPMD
  return order, active


def _block(xs, b, block_size):
  """Block b ([C, bs, ...]) of per-chunk sorted arrays [C, nb * bs, ...]."""
  return jax.lax.dynamic_slice_in_dim(xs, b * block_size, block_size, axis=1)


def _lm_blocks(h, head, tgt, w, order, active, *, block_size, with_grads):
  """The loop over active blocks: sum of weighted NLLs and, with_grads, d/dh (sorted order) and d/dhead.

  h [C, T, D] hidden per chunk; head [D, V]; tgt / w / order [C, nb * bs] in sorted order.
  Logits of one block, [C, bs, V] float32, are the only vocabulary-sized buffer. The head stays [D, V] and the
  softmax is written as one max, one exp-sum and one fused gradient pass: measured fastest on XLA CPU.
  """
  c, _, d = h.shape
  sorted_len = order.shape[1]

  def body(b, carry):
    total, dh, dhead = carry
    idx, tb, wb = (_block(x, b, block_size) for x in (order, tgt, w))
    hb = jnp.take_along_axis(h, idx[..., None], axis=1)                      # [C, bs, D]
    logits = jnp.einsum("csd,dv->csv", hb, head, preferred_element_type=jnp.float32)
    peak = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits - peak)
    sum_e = jnp.sum(e, axis=-1, keepdims=True)
    lse = (peak + jnp.log(sum_e))[..., 0]
    nll = lse - jnp.take_along_axis(logits, tb[..., None], axis=-1)[..., 0]
    total = total + jnp.sum(nll * wb)
    if with_grads:
      is_target = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2) == tb[..., None]
      dlogits = e * (wb[..., None] / sum_e) - jnp.where(is_target, wb[..., None], 0.0)   # w * (softmax - onehot)
      dlogits = dlogits.astype(head.dtype)
      dhb = jnp.einsum("csv,dv->csd", dlogits, head, preferred_element_type=jnp.float32)
      dh = jax.lax.dynamic_update_slice_in_dim(dh, dhb, b * block_size, axis=1)
      # Per chunk: chunks live on their data shard, so the sum over them happens once, after the loop, as a
      # reduce-scatter into the head's shards (a [D, V] carry would be all-reduced whole in every iteration).
      dhead = dhead + jnp.einsum("csd,csv->cdv", hb, dlogits, preferred_element_type=jnp.float32)
    return total, dh, dhead

  zeros = (jnp.zeros((), jnp.float32),
           jnp.zeros((c, sorted_len, d) if with_grads else (0,), jnp.float32),
           jnp.zeros((c,) + head.shape if with_grads else (0,), jnp.float32))
  return jax.lax.fori_loop(0, active, body, zeros)


def _gathered(head):
  """The head whole along D (vocabulary still split over `tensor`) before the loop: one gather per step, not one
  per block."""
  return nn.with_logical_constraint(head, (None, axes.ACT_VOCAB))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _target_nll_sum(h, head, tgt, w, order, active, block_size):
  return _lm_blocks(h, _gathered(head), tgt, w, order, active, block_size=block_size, with_grads=False)[0]


def _target_nll_sum_fwd(h, head, tgt, w, order, active, block_size):
  # Loss and gradients in one pass over the blocks: each block's logits are made once, not again for backward.
  total, dh_sorted, dhead = _lm_blocks(h, _gathered(head), tgt, w, order, active, block_size=block_size,
                                       with_grads=True)
  inverse = jnp.argsort(order[:, :h.shape[1]], axis=1)                       # sorted slot of each position
  dh = jnp.take_along_axis(dh_sorted, inverse[..., None], axis=1)
  dhead = nn.with_logical_constraint(jnp.sum(dhead, axis=0), (axes.EMBED, axes.VOCAB))  # the param's shards
  return total, (dh.astype(h.dtype), dhead.astype(head.dtype))


def _target_nll_sum_bwd(block_size, residuals, g):
  del block_size
  dh, dhead = residuals
  return (g * dh).astype(dh.dtype), (g * dhead).astype(dhead.dtype), None, None, None, None


_target_nll_sum.defvjp(_target_nll_sum_fwd, _target_nll_sum_bwd)


def next_token_loss_on_targets(hidden, head, tokens, segment_ids, special_tokens, *, num_chunks: int = 1,
                               block_size: int = 512, num_targets=None):
  """next_token_loss with the LM head, softmax and loss computed only where there is a target.

  hidden [B, L, D] (position i predicts token i + 1), head [D, V] (logits = hidden @ head), tokens /
  segment_ids int [B, L]. Per chunk (the batch contract's; chunks stay on their data shard), target positions are
  sorted to the front and processed in blocks of `block_size` positions, as many blocks as the fullest chunk
  needs: static shapes, compute proportional to the targets (plus at most one partial block per chunk), and never
  more than one block's [C, bs, V] logits in memory. Equals next_token_loss on the full logits (values and
  gradients; the logits accumulate in float32). `num_targets`: the loss's denominator, by default this batch's
  target count; gradient accumulation passes the whole batch's, so that micro-batch losses add up to its mean.
  """
  b, length, _ = hidden.shape
  if b % num_chunks:
    raise ValueError(f"{b} rows do not split into {num_chunks} chunks.")
  targets, weights = generation_targets(tokens, segment_ids, special_tokens)
  # Position L - 1 of each row predicts nothing: pad to L so positions keep their flat index in the chunk.
  targets = jnp.pad(targets, ((0, 0), (0, 1)))
  weights = jnp.pad(weights, ((0, 0), (0, 1)))
  block_size = min(block_size, weights.size // num_chunks)  # a chunk smaller than a block is one block
  order, active = _sort_targets_first(weights, num_chunks, block_size)
  in_order = lambda x: jnp.take_along_axis(x.reshape(num_chunks, -1), order, axis=1)
  pad = jnp.arange(order.shape[1]) < weights.size // num_chunks               # pad entries weigh 0
  tgt, w = in_order(targets), in_order(weights) * pad
  h = hidden.reshape(num_chunks, -1, hidden.shape[-1])
  total = _target_nll_sum(h, head.astype(hidden.dtype), tgt, w, order, active, block_size)
  count = jnp.sum(weights)
  loss = total / jnp.maximum(count if num_targets is None else num_targets, 1.0)
  computed = (active * block_size * num_chunks).astype(jnp.float32)
  return loss, dict(generation_loss=loss, num_text_targets=count, lm_head_positions=computed)


def lm_head_positions(tokens, segment_ids, special_tokens, *, num_chunks: int, block_size: int):
  """(positions the target-only LM head computes, positions with a target) for a host batch [B, L]: the numbers
  behind computed vs useful LM-head FLOPs."""
  weights = np.asarray(generation_targets(tokens, segment_ids, special_tokens)[1])
  per_chunk = weights.reshape(num_chunks, -1).sum(axis=1)
  block_size = min(block_size, np.size(tokens) // num_chunks)
  blocks = -(-int(per_chunk.max()) // block_size)
  return blocks * block_size * num_chunks, int(per_chunk.sum())


def generation_loss(outputs, batch, loss_config, special_tokens, *, num_chunks: int = 1, num_targets=None):
  """w_gen * L_gen from the model outputs (`hidden` and `lm_head`), the LM head on target positions only.
  -> (weighted loss, metrics); (0, {}) when the generation weight is 0."""
  if not loss_config["generation_weight"]:
    return jnp.zeros((), jnp.float32), {}
  gen, metrics = next_token_loss_on_targets(outputs["hidden"], outputs["lm_head"], batch["tokens"],
                                            batch["segment_ids"], special_tokens, num_chunks=num_chunks,
                                            block_size=loss_config["lm_block_size"], num_targets=num_targets)
  return loss_config["generation_weight"] * gen, metrics


def lcl_loss(outputs, batch, loss_config, special_tokens, *, mesh=None, data_axes=("data", "fsdp"),
             num_chunks: int = 1):
  """L = lambda * L_con + w_gen * L_gen from the model outputs.

  A weight of 0 switches its term off (the paper's two ablations). The contrastive metrics are reported
  either way (they are cheap and show the generation-only collapse); the LM head runs only when the generation
  weight is non-zero (generation_loss).
  """
  con, metrics = contrastive_loss(outputs["v"], outputs["t"], outputs["contrastive_valid"],
                                  outputs["logit_scale"], mesh=mesh, data_axes=data_axes)
  gen, m = generation_loss(outputs, batch, loss_config, special_tokens, num_chunks=num_chunks)
  total = loss_config["contrastive_weight"] * con + gen
  metrics.update(m)
  metrics["loss"] = total
  return total, metrics
