"""The pure train step: sharded == single device, it learns, non-finite steps never touch the params."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common, vitb16_mmc4
from data_pipelines import batch_spec
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
  model_config = vitb16_mmc4.get_config("runlocal").model
  params = models.abstract_params(model_config, batch_spec.smallest(model_config))
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
  # SGD at rate 1: the params' difference is the gradients' (accumulation steps A = 1 on this mesh).
  diff = max(jax.tree.leaves(jax.tree.map(lambda g, w: float(np.max(np.abs(g - w))), got_state.params,
                                          want_state.params)))
  print(f"{mesh_spec}, A = 1: largest |sharded - single-device| gradient {diff:.2e}")
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=2e-5), got_state.params, want_state.params)
  # Large params really are split over fsdp.
  kernel = got_state.params["decoder"]["block_0"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.spec[0] == "fsdp"


def test_micro_batch_split_is_per_shard_and_merge_inverts_it():
  batch, _ = tiny_batch(num_chunks=4)
  # 4 chunks = 2 data shards x 2 micro-batches; micro-batch m = chunk m of each shard's 2 chunks.
  micro = ts.split_micro_batches(batch, 2, 2)
  rows = batch["tokens"].shape[0] // 4
  np.testing.assert_array_equal(micro["tokens"][1][:rows], batch["tokens"][rows:2 * rows])
  np.testing.assert_array_equal(micro["tokens"][1][rows:], batch["tokens"][3 * rows:])
  for key, x in batch.items():
    np.testing.assert_array_equal(ts.merge_micro_batches(micro[key], 2, 2), x)


def _whole_batch(model, loss_config, params, batch, num_chunks):
  """Loss, metrics and gradients of one unaccumulated step over the whole batch on one device."""
  fn = functools.partial(ts.loss_fn, model=model, loss_config=loss_config, special_tokens=ST, mesh=None,
                         num_chunks=num_chunks)
  (_, metrics), grads = jax.jit(jax.value_and_grad(fn, has_aux=True))(params, batch, jax.random.key(0))
  return metrics, grads


@pytest.mark.parametrize("accum_steps", [2, 4])  # A = 1 is test_sharded_step_matches_single_device
def test_accumulated_gradients_equal_the_whole_batch_sharded(accum_steps):
  """data 2 x fsdp 4, A micro-batches: the loss terms, their counts and every gradient equal one step over the
  whole batch on one device. Negatives come from all micro-batches (gradient caching), and the next-token loss
  is the mean over the whole batch's targets, not a mean of micro-batch means."""
  mesh = sharding.make_mesh(dict(data=2, fsdp=4))
  shards = sharding.num_data_shards(mesh)
  config, model, tx, state, batch, _ = setup(num_chunks=shards * accum_steps, sgd=True)
  want, want_grads = _whole_batch(model, config.loss, state.params, batch, shards * accum_steps)

  rules = sharding.rules(config)
  boxed = jax.eval_shape(lambda b: ts.init_state(model, tx, b, 0, shards), batch)
  param_sharding = sharding.logical_shardings(boxed, mesh, rules).params
  fn = lambda p, b: ts.cached_gradients(p, b, jax.random.key(0), model=model, loss_config=config.loss,
                                        special_tokens=ST, mesh=mesh, num_chunks=shards, accum_steps=accum_steps)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    got_grads, got = jax.jit(fn, in_shardings=(param_sharding, sharding.data_sharding(mesh)))(state.params, batch)
  for key in ("loss", "contrastive_loss", "generation_loss", "contrastive_acc_i2t", "contrastive_acc_t2i"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
  for key in ("num_valid_images", "num_text_targets", "lm_head_positions"):
    assert float(got[key]) >= float(want[key]) if key == "lm_head_positions" else float(got[key]) == float(want[key])
  assert float(want["num_valid_images"]) > 2 * accum_steps  # negatives do come from several micro-batches
  diff = max(jax.tree.leaves(jax.tree.map(lambda g, w: float(np.max(np.abs(g - w))), got_grads, want_grads)))
  scale = max(jax.tree.leaves(jax.tree.map(lambda w: float(np.max(np.abs(w))), want_grads)))
  print(f"accum_steps={accum_steps}: largest |accumulated - whole-batch| gradient {diff:.2e} (largest {scale:.2e})")
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=2e-6, rtol=2e-5), got_grads, want_grads)


@pytest.mark.parametrize("weights", [(0.1, 0.0), (0.0, 1.0)], ids=["contrastive_only", "generation_only"])
def test_accumulation_with_one_loss_term(weights):
  """The ablations' weights: a term switched off is neither computed nor reported wrongly."""
  config, model, _, state, batch, _ = setup(num_chunks=2, sgd=True)
  lc = config.loss.copy_and_resolve_references()
  lc.contrastive_weight, lc.generation_weight = weights
  want, want_grads = _whole_batch(model, lc, state.params, batch, 2)
  got_grads, got = jax.jit(lambda p, b: ts.cached_gradients(
      p, b, jax.random.key(0), model=model, loss_config=lc, special_tokens=ST, mesh=None, num_chunks=1,
      accum_steps=2))(state.params, batch)
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-7, err_msg=key)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=2e-6, rtol=2e-5), got_grads, want_grads)


def test_learning_rate_and_logit_scale_through_the_step():
  """The logged rate is the one the update applied, from the optimizer's count, which a skipped step does not
  advance; a logit scale above its bound (an old checkpoint) is clamped back by the first update."""
  config, _, tx, state, batch, step = setup(peak_lr=1.0)
  bound = config.loss.max_logit_scale
  state = state.replace(params=dict(state.params, logit_scale=jnp.float32(bound + 0.4)))
  config.optim.update(warmup_steps=10, total_steps=100)
  schedule = optim.learning_rate_schedule(config.optim)
  tx = optim.make_optimizer(config.optim)
  state = state.replace(opt_state=tx.init(state.params))
  step = jax.jit(functools.partial(step, tx=tx, lr_schedule=schedule))
  bad = dict(batch, tokens=batch["tokens"].copy())
  bad["tokens"][0, 3] = config.model.decoder.vocab_size + 5   # NaN embedding: the step is skipped
  logged = []
  for b in (batch, bad, batch, batch):
    state, metrics = step(state, b)
    logged.append(float(metrics["learning_rate"]))
    assert 0.0 <= float(state.params["logit_scale"]) <= bound
  assert int(state.step) == 4 and int(optim.schedule_count(state.opt_state)) == 3
  # Steps 0, 1 (skipped), 2, 3 ran at the optimizer's counts 0, 1, 1, 2 (a skipped step does not advance it).
  np.testing.assert_allclose(logged, [float(schedule(0)), float(schedule(1)), float(schedule(1)),
                                      float(schedule(2))], rtol=1e-6)


def test_logged_learning_rate_is_the_one_applied_on_the_step_after_a_skipped_step():
  """After a skipped (non-finite) step the train state's step and the optimizer's count differ; the next step logs
  the learning rate its update applied, measured by running that same compiled step at a rate of 1 (the same
  gradients and moments: the update's direction) and dividing the two parameter changes."""
  config, _, _, state, batch, step = setup()
  config.optim.update(peak_lr=1.0, warmup_steps=10, total_steps=100)
  c = config.optim
  schedule = optim.learning_rate_schedule(c)
  tx = optim.make_optimizer(c)
  state = state.replace(opt_state=tx.init(state.params))
  scheduled = jax.jit(functools.partial(step, tx=tx, lr_schedule=schedule))
  bad = dict(batch, tokens=batch["tokens"].copy())
  bad["tokens"][0, 3] = config.model.decoder.vocab_size + 5   # NaN embedding: the step is skipped
  for b in (batch, bad):
    state, metrics = scheduled(state, b)
  assert float(metrics["step_skipped"]) == 1.0
  assert int(state.step) == 2 and int(optim.schedule_count(state.opt_state)) == 1
  after, metrics = scheduled(state, batch)
  assert float(metrics["step_skipped"]) == 0.0

  # Rate 1 from the same program: the schedule's own count (Adam's bias correction keeps another) at the end of
  # warm-up, where the rate is the peak, 1. (A second program, AdamW at a constant 1, may round its gradients
  # differently, and Adam turns round-off in gradients of ~0 into updates of ~lr.)
  is_schedule = lambda s: isinstance(s, optax.ScaleByScheduleState)
  at_peak = jax.tree.map(lambda s: s._replace(count=jnp.full_like(s.count, c.warmup_steps)) if is_schedule(s) else s,
                         state.opt_state, is_leaf=is_schedule)
  unit, unit_metrics = scheduled(state.replace(opt_state=at_peak), batch)
  assert float(unit_metrics["learning_rate"]) == float(schedule(c.warmup_steps)) == 1.0

  def change(new):  # every parameter but the logit scale, which the step clamps after the update
    return np.concatenate([np.ravel(np.asarray(a, np.float64) - np.asarray(b, np.float64)) for a, b in zip(
        jax.tree.leaves(dict(new.params, logit_scale=0.0)), jax.tree.leaves(dict(state.params, logit_scale=0.0)))])
  applied_update, unit_update = change(after), change(unit)
  applied = float(applied_update @ unit_update / (unit_update @ unit_update))
  np.testing.assert_allclose(applied_update, applied * unit_update, atol=1e-6)  # one rate for every parameter
  assert applied == pytest.approx(float(metrics["learning_rate"]), rel=1e-5)
  assert applied == pytest.approx(float(schedule(1)), rel=1e-5)       # the optimizer's count, 1
  assert float(schedule(int(state.step))) == pytest.approx(2 * applied)  # not the batches' count, 2


def test_target_only_lm_head_gives_the_dense_loss_and_gradients():
  """The step's loss (LM head on target positions only) equals the loss from the model's full [B, L, V] logits,
  and so do the gradients, through the whole model."""
  config, model, _, state, batch, _ = setup()
  lc = config.loss.copy_and_resolve_references()
  lc.lm_block_size = 24  # several blocks per chunk, the last one partial

  def dense(p):
    out = model.apply({"params": p}, batch, num_chunks=2)
    con = losses.contrastive_loss(out["v"], out["t"], out["contrastive_valid"], out["logit_scale"])[0]
    gen = losses.next_token_loss(out["logits"], batch["tokens"], batch["segment_ids"], ST)[0]
    return lc.contrastive_weight * con + lc.generation_weight * gen

  def targets_only(p):
    return ts.loss_fn(p, batch, jax.random.key(0), model=model, loss_config=lc, special_tokens=ST, mesh=None,
                      num_chunks=2)[0]

  want, want_grads = jax.jit(jax.value_and_grad(dense))(state.params)
  got, got_grads = jax.jit(jax.value_and_grad(targets_only))(state.params)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-5), got_grads, want_grads)
