"""The pure training step: loss, gradients (optionally accumulated over micro-batches), a guarded update.

Nothing here knows about meshes beyond passing one to the loss; `train.py` jits `train_step` with explicit
shardings. Gradient accumulation note: with M micro-batches the contrastive negatives of each micro-batch come
from that micro-batch (still from every device), so M > 1 trades negatives for memory; M = 1 is the paper.
"""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from lcl_jax import losses


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


def train_step(state: TrainState, batch, *, model, tx, loss_config, special_tokens, mesh=None,
               num_chunks: int = 1, accum_steps: int = 1, lr_schedule=None):
  """One optimizer step. A non-finite loss or gradient leaves params and optimizer state untouched (the step
  counter still advances: it counts batches, which keeps data resume a function of the step).

  batch: the contract's arrays with C * accum_steps chunks. Returns (state, metrics).
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  grad_fn = jax.value_and_grad(
      functools.partial(loss_fn, model=model, loss_config=loss_config, special_tokens=special_tokens,
                        mesh=mesh, num_chunks=num_chunks), has_aux=True)

  if accum_steps == 1:
    (_, metrics), grads = grad_fn(state.params, batch, rng)
  else:
    micro = split_micro_batches(batch, accum_steps, num_chunks)

    def accumulate(carry, xs):
      mb, i = xs
      (_, m), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (g, m)), None

    zeros = jax.eval_shape(lambda: grad_fn(state.params, jax.tree.map(lambda x: x[0], micro), rng))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (zeros[1], zeros[0][1]))
    (grads, metrics), _ = jax.lax.scan(accumulate, zeros, (micro, jnp.arange(accum_steps)))
    grads, metrics = jax.tree.map(lambda x: x / accum_steps, (grads, metrics))

  grad_norm = optax.global_norm(grads)
  ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
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
    metrics["learning_rate"] = lr_schedule(state.step)
  return new_state, metrics
