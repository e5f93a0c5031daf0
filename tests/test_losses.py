"""Losses against plain NumPy, on one device and sharded over an 8-device CPU mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from lcl_jax import losses, sharding
from tests import synthetic

MAX_SCALE = np.log(100.0)


def _inputs(seed, n=32, d=16):
  rng = np.random.default_rng(seed)
  v = rng.normal(size=(n, d)).astype(np.float32)
  t = (0.5 * v + rng.normal(size=(n, d))).astype(np.float32)
  valid = rng.random(n) < 0.7
  return v, t, valid


def _loss(v, t, valid, s, mesh=None):
  return losses.contrastive_loss(v, t, valid, s, mesh=mesh)[0]


def _np_grad(f, x, eps=1e-3):
  """Central differences of a float64 NumPy function."""
  g = np.zeros_like(x, dtype=np.float64)
  for i in np.ndindex(x.shape):
    xp, xm = x.astype(np.float64), x.astype(np.float64)
    xp[i] += eps
    xm[i] -= eps
    g[i] = (f(xp) - f(xm)) / (2 * eps)
  return g


@pytest.mark.parametrize("seed", [0, 1])
def test_contrastive_matches_numpy_with_excluded_images(seed):
  v, t, valid = _inputs(seed)
  s = np.float32(np.log(1 / 0.07))
  ours = float(_loss(v, t, valid, s))
  ref = synthetic.np_contrastive(v, t, valid, s)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  # Changing an excluded slot changes nothing: it is neither anchor nor negative.
  v2 = v.copy()
  v2[np.flatnonzero(~valid)[0]] += 10.0
  np.testing.assert_allclose(float(_loss(v2, t, valid, s)), ours, rtol=1e-6)


def test_contrastive_gradient_matches_numpy():
  v, t, valid = _inputs(3, n=10, d=4)
  s = np.float32(1.5)
  gv, gt, gs = jax.grad(_loss, argnums=(0, 1, 3))(v, t, valid, s)
  ref_v = _np_grad(lambda x: synthetic.np_contrastive(x, t, valid, s), v)
  ref_t = _np_grad(lambda x: synthetic.np_contrastive(v, x, valid, s), t)
  ref_s = _np_grad(lambda x: synthetic.np_contrastive(v, t, valid, float(x)), np.asarray(s, np.float64))
  np.testing.assert_allclose(gv, ref_v, atol=1e-5)
  np.testing.assert_allclose(gt, ref_t, atol=1e-5)
  np.testing.assert_allclose(gs, ref_s, atol=1e-5)
  assert np.all(gv[~valid] == 0) and np.all(gt[~valid] == 0)


def test_logit_scale_stays_live_at_its_bound():
  """The loss uses the parameter as it is (no forward clamp whose gradient is 0 above the bound); the clamp is on
  the parameter after each update, so a value pushed over the bound comes back, and moves down from the bound
  under a gradient that lowers it."""
  v, t, valid = _inputs(4)
  above = np.float32(MAX_SCALE + 0.4)
  assert float(jax.grad(_loss, argnums=3)(v, t, valid, above)) != 0.0
  params = dict(logit_scale=jnp.float32(above), other=jnp.ones(3))
  clamped = losses.clamp_logit_scale(params, MAX_SCALE)
  np.testing.assert_allclose(float(clamped["logit_scale"]), MAX_SCALE, rtol=1e-7)
  np.testing.assert_array_equal(clamped["other"], params["other"])
  assert float(losses.clamp_logit_scale(dict(logit_scale=jnp.float32(-1.0)), MAX_SCALE)["logit_scale"]) == 0.0
  # Gradient descent on a loss that wants a smaller scale, from the bound: the parameter leaves it.
  s = jnp.float32(MAX_SCALE)
  for _ in range(3):
    s = losses.clamp_logit_scale(dict(logit_scale=s - 0.1 * jax.grad(lambda x: x ** 2)(s)), MAX_SCALE)["logit_scale"]
  assert float(s) < MAX_SCALE - 0.5


def test_no_valid_images_gives_zero_not_nan():
  v, t, _ = _inputs(5)
  assert float(_loss(v, t, np.zeros(len(v), bool), np.float32(2.0))) == 0.0


@pytest.mark.parametrize("mesh_spec", [dict(data=8), dict(data=4, fsdp=2), dict(data=2, fsdp=2, tensor=2)])
def test_contrastive_sharded_equals_single_device(mesh_spec):
  mesh = sharding.make_mesh(mesh_spec)
  v, t, valid = _inputs(6, n=64)
  s = np.float32(2.3)
  want, want_grads = jax.value_and_grad(_loss, argnums=(0, 1, 3))(v, t, valid, s)
  rows = sharding.data_sharding(mesh)
  args = [jax.device_put(x, rows) for x in (v, t, valid)]
  fn = jax.jit(jax.value_and_grad(lambda v, t, valid, s: _loss(v, t, valid, s, mesh), argnums=(0, 1, 3)))
  got, got_grads = fn(*args, s)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, atol=1e-6)


def test_sharded_contrastive_never_builds_global_logits():
  """Each of 8 shards computes [N/8, N] logits; no [N, N] array appears in the compiled program."""
  mesh = sharding.make_mesh(dict(data=8))
  n = 64
  v, t, valid = _inputs(7, n=n)
  rows = sharding.data_sharding(mesh)
  args = [jax.device_put(x, rows) for x in (v, t, valid)]
  fn = jax.jit(jax.grad(lambda v, t, valid, s: _loss(v, t, valid, s, mesh), argnums=(0, 1)))
  hlo = fn.lower(*args, np.float32(2.0)).compile().as_text()
  assert f"f32[{n // 8},{n}]" in hlo
  assert f"f32[{n},{n}]" not in hlo


def test_next_token_loss_matches_numpy_and_target_rules():
  rng = np.random.default_rng(0)
  batch, _ = synthetic.make_batch(rng, num_chunks=2, rows_per_chunk=2, images_per_chunk=3, seq_len=40,
                                  patches=4, image_size=8, vocab_size=50)
  logits = rng.normal(size=batch["tokens"].shape + (50,)).astype(np.float32)
  loss, metrics = losses.next_token_loss(logits, batch["tokens"], batch["segment_ids"], common.SPECIAL_TOKENS)
  ref, count = synthetic.np_next_token(logits, batch["tokens"], batch["segment_ids"])
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  assert int(metrics["num_text_targets"]) == count


def test_target_weights_by_kind():
  st = common.SPECIAL_TOKENS
  text = max(st.values()) + 1
  assert text == st["unk"] + 1  # <unk> is not text
  tokens = np.array([[st["bos"], text, st["boi"], st["img"], st["img"], st["eoi"], text, st["eos"],
                      st["bos"], text, st["unk"], text, st["eos"], st["pad"]]], np.int32)
  segs = np.array([[1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0]], np.int32)
  targets, weights = losses.generation_targets(tokens, segs, st)
  # Targets:        text boi img img eoi text eos  <s>(new segment) text unk text eos pad
  expected = np.array([[1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0]], np.float32)
  np.testing.assert_array_equal(np.asarray(weights), expected)


@pytest.mark.parametrize("num_chunks,block_size,dtype", [(2, 16, np.float32), (1, 7, np.float32),
                                                         (2, 512, np.float32), (2, 16, jnp.bfloat16)])
def test_target_only_next_token_loss_equals_full_logits(num_chunks, block_size, dtype):
  """Packed rows (several segments, padding, image spans), blocks that do not divide a chunk or exceed it: the
  target-only LM head gives the dense loss and the same gradients for hidden states and head."""
  rng = np.random.default_rng(1)
  batch, _ = synthetic.make_batch(rng, num_chunks=2, rows_per_chunk=2, images_per_chunk=3, seq_len=40,
                                  patches=4, image_size=8, vocab_size=50)
  assert len(np.unique(batch["segment_ids"])) > 2 and (batch["segment_ids"] == 0).any()  # packed and padded
  hidden = rng.normal(size=batch["tokens"].shape + (8,)).astype(np.float32)
  head = rng.normal(size=(8, 50)).astype(np.float32)
  st = common.SPECIAL_TOKENS

  def full(h, w):
    logits = jnp.einsum("bld,dv->blv", h.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
    return losses.next_token_loss(logits, batch["tokens"], batch["segment_ids"], st)[0]

  def targets_only(h, w):
    loss, m = losses.next_token_loss_on_targets(h.astype(dtype), w, batch["tokens"], batch["segment_ids"], st,
                                                num_chunks=num_chunks, block_size=block_size)
    return loss, m

  want, want_grads = jax.value_and_grad(full, argnums=(0, 1))(hidden, head)
  (got, m), got_grads = jax.jit(jax.value_and_grad(targets_only, argnums=(0, 1), has_aux=True))(hidden, head)
  tol = 1e-5 if dtype == np.float32 else 2e-2
  np.testing.assert_allclose(got, want, rtol=tol)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, atol=tol, rtol=tol)
  # Computed positions: every chunk's targets rounded up to whole blocks, never all positions when a block fits.
  per_chunk = losses.generation_targets(batch["tokens"], batch["segment_ids"], st)[1].reshape(num_chunks, -1)
  block_size = min(block_size, batch["tokens"].size // num_chunks)  # a chunk smaller than a block is one block
  blocks = -(-int(np.max(np.sum(per_chunk, axis=1))) // block_size)
  assert float(m["lm_head_positions"]) == blocks * block_size * num_chunks
  assert losses.lm_head_positions(batch["tokens"], batch["segment_ids"], st, num_chunks=num_chunks,
                                  block_size=block_size) == (blocks * block_size * num_chunks, np.sum(per_chunk))
  assert float(m["num_text_targets"]) == float(np.sum(per_chunk))