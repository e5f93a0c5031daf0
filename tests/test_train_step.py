"""The pure train step: sharded == single device, it learns, non-finite steps never touch the params."""
import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from configs import common, vitb16_mmc4
from lcl_jax import losses, models, optim, sharding, train_step as ts
from tests import synthetic
from tests.test_model import tiny_batch, tiny_config

ST = common.SPECIAL_TOKENS


def setup(num_chunks=2, peak_lr=1e-3, seed=0, sgd=False, **batch_kw):
  """sgd=True: params after one step are linear in the gradients, so comparing two implementations of the
  step is well conditioned (Adam's first update is ~lr * sign(g) and flips on round-off for g ~ 0)."""
  config = vitb16_mmc4.get_config("runlocal")
  config.model = tiny_config()
  config.optim = common.optim_config(peak_lr=peak_lr, total_steps=100, warmup_steps=0)
  model = models.LCL(config.model)
  tx = optax.sgd(1.0) if sgd else optim.make_optimizer(config.optim)
  batch, _ = tiny_batch(seed=seed, num_chunks=num_chunks, **batch_kw)
  state = jax.jit(lambda b: ts.init_state(model, tx, b, 0, num_chunks))(batch)
  state = nn.unbox(state)
  step = functools.partial(ts.train_step, model=model, tx=tx, loss_config=config.loss, special_tokens=ST,
                           num_chunks=num_chunks)
  return config, model, tx, state, batch, step


def test_weight_decay_mask():
  params = models.abstract_params(vitb16_mmc4.get_config("runlocal").model)
  mask = optim.decay_mask(nn.unbox(params))
  flat = {"/".join(k.key for k in path): m for path, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat["vit/block_0/mlp/fc1/kernel"] and flat["decoder/token_embed/embedding"]
  assert flat["vit/block_0/attn/query/kernel"]
  for name in ("vit/pos_embed", "decoder/pos_embed", "logit_scale", "pool/query", "vit/block_0/mlp/fc1/bias",
               "vit/block_0/ln_attn/scale", "vit/block_0/ls_mlp/scale"):
    assert not flat[name], name


def test_schedule_warms_up_then_decays():
  c = common.optim_config(peak_lr=1.0, total_steps=100, warmup_steps=10)
  lr = optim.learning_rate_schedule(c)
  assert float(lr(0)) == 0.0 and abs(float(lr(10)) - 1.0) < 1e-6
  assert float(lr(55)) == pytest.approx(0.5, abs=1e-2) and float(lr(100)) == pytest.approx(0.0, abs=1e-6)


def test_loss_falls_on_a_fixed_batch():
  _, _, _, state, batch, step = setup(peak_lr=3e-3)
  step = jax.jit(step)
  first = None
  for _ in range(30):
    state, metrics = step(state, batch)
    first = first if first is not None else float(metrics["loss"])
  assert float(metrics["loss"]) < 0.5 * first, (first, float(metrics["loss"]))
  assert int(state.step) == 30 and int(state.nonfinite_total) == 0


def test_nonfinite_batch_is_skipped_and_counted():
  config, _, _, state, batch, step = setup()
  step = jax.jit(step)
  bad = dict(batch, tokens=batch["tokens"].copy())
  bad["tokens"][0, 3] = config.model.decoder.vocab_size + 5   # out-of-vocabulary id: NaN embedding
  new, metrics = step(state, bad)
  assert not np.isfinite(float(metrics["loss"]))
  assert int(new.step) == 1 and int(new.nonfinite_total) == 1 and int(new.nonfinite_in_a_row) == 1
  jax.tree.map(np.testing.assert_array_equal, new.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, new.opt_state, state.opt_state)
  new, _ = step(new, bad)
  assert int(new.nonfinite_in_a_row) == 2
  new, _ = step(new, batch)
  assert int(new.step) == 3 and int(new.nonfinite_in_a_row) == 0 and int(new.nonfinite_total) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(new.params))


@pytest.mark.parametrize("mesh_spec", [dict(data=4, fsdp=2), dict(data=2, fsdp=2, tensor=2)])
def test_sharded_step_matches_single_device(mesh_spec):
  mesh = sharding.make_mesh(mesh_spec)
  c = sharding.num_data_shards(mesh)
  config, model, tx, state, batch, step = setup(num_chunks=c, sgd=True)
  want_state, want = jax.jit(step)(state, batch)

  rules = sharding.rules(config)
  boxed = jax.eval_shape(lambda b: ts.init_state(model, tx, b, 0, c), batch)
  state_sharding = sharding.logical_shardings(boxed, mesh, rules)
  sharded_step = functools.partial(step.func, **dict(step.keywords, mesh=mesh))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    got_state, got = jax.jit(sharded_step, in_shardings=(state_sharding, sharding.data_sharding(mesh)),
                             out_shardings=(state_sharding, None))(state, batch)
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=2e-5)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=2e-5), got_state.params, want_state.params)
  # Large params really are split over fsdp.
  kernel = got_state.params["decoder"]["block_0"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.spec[0] == "fsdp"


def test_gradient_accumulation_averages_micro_batch_gradients():
  _, model, tx, state, batch, step = setup(num_chunks=4, sgd=True)
  # 4 chunks = 2 data shards x 2 micro-batches; micro-batch m = chunk m of each shard's 2 chunks.
  micro = ts.split_micro_batches(batch, 2, 2)
  rows = batch["tokens"].shape[0] // 4
  np.testing.assert_array_equal(micro["tokens"][1][:rows], batch["tokens"][rows:2 * rows])
  np.testing.assert_array_equal(micro["tokens"][1][rows:], batch["tokens"][3 * rows:])
  accumulated, _ = jax.jit(functools.partial(step, num_chunks=2, accum_steps=2))(state, batch)
  # Same update by hand: mean of the two micro-batch gradients.
  grad = jax.jit(jax.grad(lambda p, b, r: ts.loss_fn(p, b, r, model=model, loss_config=step.keywords["loss_config"],
                                             special_tokens=ST, mesh=None, num_chunks=2)[0]))
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 0)
  g = jax.tree.map(lambda a, b: (a + b) / 2, *[grad(state.params, jax.tree.map(lambda x: x[m], micro),
                                                    jax.random.fold_in(rng, m)) for m in range(2)])
  updates, _ = tx.update(g, state.opt_state, state.params)
  by_hand = optax.apply_updates(state.params, updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), accumulated.params, by_hand)


def test_target_only_lm_head_gives_the_dense_loss_and_gradients():
  """The step's loss (LM head on target positions only) equals the loss from the model's full [B, L, V] logits,
  and so do the gradients, through the whole model."""
  config, model, _, state, batch, _ = setup()
  lc = config.loss.copy_and_resolve_references()
  lc.lm_block_size = 24  # several blocks per chunk, the last one partial

  def dense(p):
    out = model.apply({"params": p}, batch, num_chunks=2)
    con = losses.contrastive_loss(out["v"], out["t"], out["contrastive_valid"], out["logit_scale"],
                                  max_logit_scale=lc.max_logit_scale)[0]
    gen = losses.next_token_loss(out["logits"], batch["tokens"], batch["segment_ids"], ST)[0]
    return lc.contrastive_weight * con + lc.generation_weight * gen

  def targets_only(p):
    return ts.loss_fn(p, batch, jax.random.key(0), model=model, loss_config=lc, special_tokens=ST, mesh=None,
                      num_chunks=2)[0]

  want, want_grads = jax.jit(jax.value_and_grad(dense))(state.params)
  got, got_grads = jax.jit(jax.value_and_grad(targets_only))(state.params)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-5), got_grads, want_grads)
