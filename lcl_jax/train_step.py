"""The pure training step: loss, gradients (optionally accumulated over micro-batches), a guarded update.

Nothing here knows about meshes beyond passing one to the loss; `train.py` jits `train_step` with explicit
shardings. Gradient accumulation (`accum_steps` A > 1) equals the step over the whole batch, both loss terms
(gradient caching, Gao et al. 2021; the authors' `accum_freq`): the contrastive loss needs every micro-batch's v and
t for its negatives, so a first pass computes them without keeping activations, the whole batch's contrastive loss
gives d/dv and d/dt, and a second pass per micro-batch backpropagates those feature gradients together with its
next-token loss, normalised by the whole batch's target count. Memory: one micro-batch's activations plus the
features [N, D_e] of the batch. Extra compute: the first pass, one forward of ViT + decoder per micro-batch (about
a third of a micro-batch's forward + backward; the LM head is not run in it).
"""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from lcl_jax import losses, optim


@flax.struct.dataclass
class TrainState:
  step: jax.Array                 # int32 []: steps taken (= batches consumed), skipped ones included
  params: Any
  opt_state: Any
  rng: jax.Array                  # uint32 [2]: raw key data (checkpoints as a plain array)
  nonfinite_in_a_row: jax.Array   # int32 []: consecutive skipped steps
  nonfinite_total: jax.Array      # int32 []: skipped steps since the start


def init_state(model, tx, batch, seed: int, num_chunks: int) -> TrainState:
  """Initial state, logically boxed: the optimizer moments are initialised from the boxed params so they carry the
  params' axis names and shard like them. Callers derive shardings, then unbox. Pure: jit with out_shardings."""
  params_rng, state_rng = jax.random.split(jax.random.key(seed))
  params = model.init({"params": params_rng}, batch, num_chunks=num_chunks)["params"]
  opt_state = tx.init(params)
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, opt_state=opt_state, rng=jax.random.key_data(state_rng),
                    nonfinite_in_a_row=zero, nonfinite_total=zero)


def split_micro_batches(batch, accum_steps: int, num_chunks: int):
  """[C * M chunks] -> [M, C chunks]: micro-batch m takes chunk m of every data shard's M local chunks,
  so the split needs no communication (each shard's chunks are contiguous)."""
  def split(x):
    x = x.reshape((num_chunks, accum_steps, -1) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape((accum_steps, -1) + x.shape[3:])
  return jax.tree.map(split, batch)


def loss_fn(params, batch, rng, *, model, loss_config, special_tokens, mesh, num_chunks):
  outputs = model.apply({"params": params}, batch, num_chunks=num_chunks, train=True, compute_logits=False,
                        rngs={"dropout": rng})
  return losses.lcl_loss(outputs, batch, loss_config, special_tokens, mesh=mesh, num_chunks=num_chunks)


def merge_micro_batches(x, accum_steps: int, num_chunks: int):
  """The inverse of split_micro_batches for one array [M, C * k, ...] -> [C * M * k, ...], the batch's order."""
  x = x.reshape((accum_steps, num_chunks, -1) + x.shape[2:])
  return jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[3:])


def cached_gradients(params, batch, rng, *, model, loss_config, special_tokens, mesh, num_chunks, accum_steps):
  """(grads, metrics) of the whole batch's loss, one micro-batch of activations at a time (module docstring).

  Micro-batch m uses the dropout key fold_in(rng, m) in both passes, so its features are the same in each.
  """
  micro = split_micro_batches(batch, accum_steps, num_chunks)
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(accum_steps))
  apply = lambda p, mb, key: model.apply({"params": p}, mb, num_chunks=num_chunks, train=True, compute_logits=False,
                                         rngs={"dropout": key})
  merge = lambda x: merge_micro_batches(x, accum_steps, num_chunks)
  lam = loss_config["contrastive_weight"]

  def contrastive(v, t, valid, scale):
    loss, m = losses.contrastive_loss(v, t, valid, scale, mesh=mesh)
    return lam * loss, m

  def features(xs):
    out = apply(params, *xs)
    return out["v"], out["t"], out["contrastive_valid"]

  num_targets = jnp.sum(losses.generation_targets(batch["tokens"], batch["segment_ids"], special_tokens)[1])
  if lam:  # pass 1: the features of every micro-batch, and the contrastive loss's gradient with respect to them
    v, t, valid = jax.tree.map(merge, jax.lax.map(features, (micro, keys)))
    (con, metrics), (dv, dt, dscale) = jax.value_and_grad(contrastive, argnums=(0, 1, 3), has_aux=True)(
        v, t, valid, params["logit_scale"])
    cached = split_micro_batches((dv, dt), accum_steps, num_chunks)
  else:  # generation-only: nothing to cache; the contrastive metrics come from pass 2's features
    cached = ()

  def surrogate(p, mb, key, *dvt):
    """Its gradient is micro-batch m's share of the whole batch's: the cached feature gradients pulled back
    through this micro-batch's ViT and decoder, plus its next-token loss over the batch's target count."""
    out = apply(p, mb, key)
    gen, m = losses.generation_loss(out, mb, loss_config, special_tokens, num_chunks=num_chunks,
                                    num_targets=num_targets)
    pulled = sum(jnp.sum(f * d) for f, d in zip((out["v"], out["t"]), dvt))
    return pulled + gen, (gen, m.get("lm_head_positions", 0.0), (out["v"], out["t"], out["contrastive_valid"]))

  def accumulate(carry, xs):  # pass 2
    grads, gen, positions = carry
    g, (gen_m, positions_m, feats) = jax.grad(surrogate, has_aux=True)(params, *xs)
    return (jax.tree.map(jnp.add, grads, g), gen + gen_m, positions + positions_m), feats if not lam else None

  zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
  (grads, gen, positions), feats = jax.lax.scan(accumulate, zeros, (micro, keys) + cached)
  if lam:  # the logit scale reaches the loss only through the contrastive term, whose gradient is already whole
    grads = dict(grads, logit_scale=grads["logit_scale"] + dscale)
  else:
    con, metrics = contrastive(*jax.tree.map(merge, feats), params["logit_scale"])
  metrics["loss"] = con + gen
  if loss_config["generation_weight"]:
    metrics.update(generation_loss=gen / loss_config["generation_weight"], num_text_targets=num_targets,
                   lm_head_positions=positions)
  return grads, metrics


def train_step(state: TrainState, batch, *, model, tx, loss_config, special_tokens, mesh=None,
               num_chunks: int = 1, accum_steps: int = 1, lr_schedule=None):
  """One optimizer step. A non-finite loss or gradient leaves params and optimizer state untouched (the step
  counter still advances: it counts batches, which keeps data resume a function of the step; the learning rate
  follows the optimizer's own count, which does not).

  batch: the contract's arrays with C * accum_steps chunks. Returns (state, metrics).
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  kw = dict(model=model, loss_config=loss_config, special_tokens=special_tokens, mesh=mesh, num_chunks=num_chunks)
  if accum_steps == 1:
    (_, metrics), grads = jax.value_and_grad(functools.partial(loss_fn, **kw), has_aux=True)(
        state.params, batch, rng)
  else:
    grads, metrics = cached_gradients(state.params, batch, rng, accum_steps=accum_steps, **kw)

  grad_norm = optax.global_norm(grads)
  ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = losses.clamp_logit_scale(optax.apply_updates(state.params, updates), loss_config["max_logit_scale"])
  # Select, never add: a NaN update must not reach the parameters whatever its size.
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
  in_a_row = jnp.where(ok, 0, state.nonfinite_in_a_row + 1)
  new_state = state.replace(
      step=state.step + 1, params=keep(new_params, state.params),
      opt_state=keep(new_opt_state, state.opt_state), nonfinite_in_a_row=in_a_row,
      nonfinite_total=state.nonfinite_total + (~ok).astype(jnp.int32))
  metrics = dict(metrics, grad_norm=grad_norm, param_norm=optax.global_norm(new_state.params),
                 step_skipped=(~ok).astype(jnp.float32), nonfinite_in_a_row=in_a_row,
                 nonfinite_total=new_state.nonfinite_total)
  if lr_schedule is not None:
    metrics["learning_rate"] = lr_schedule(optim.schedule_count(state.opt_state))  # the rate this update applied
  return new_state, metrics
