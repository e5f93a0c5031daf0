"""The LCL model: placement, causality, segment isolation, validity, dtypes, sharding, parameter counts."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common, vitb16_laion, vitb16_mmc4, vitl14_laion_mmc4
from data_pipelines import batch_spec
from lcl_jax import losses, models, sharding
from lcl_jax.models import lcl as lcl_lib
from tests import synthetic

ST = common.SPECIAL_TOKENS
K = 4  # patches per image of the tiny model (16 px, patch 8)


def tiny_config(dtype="float32", require_text_context=True):
  c = vitb16_mmc4.get_config("runlocal").model
  c.vit.image_size, c.vit.patch_size = 16, 8
  c.decoder.vocab_size, c.decoder.max_len = 64, 64
  c.dtype = dtype
  c.require_text_context = require_text_context
  return c


def tiny_batch(seed=0, num_chunks=2):
  return synthetic.make_batch(np.random.default_rng(seed), num_chunks=num_chunks, rows_per_chunk=2,
                              images_per_chunk=4, seq_len=48, patches=K, image_size=16, vocab_size=64)


@pytest.fixture(scope="module")
def model_and_params():
  model = models.LCL(tiny_config())
  batch, _ = tiny_batch()
  params = nn.unbox(jax.jit(lambda b: model.init(jax.random.key(0), b, num_chunks=2))(batch)["params"])
  return model, params


def run(model, params, batch, num_chunks=2):
  # jit: eager op-by-op dispatch is what makes small-model tests slow.
  return jax.jit(lambda p, b: model.apply({"params": p}, b, num_chunks=num_chunks))(params, batch)


def hidden_states(model, params, batch, num_chunks=2):
  """Decoder outputs [B, L, D] of the full forward pass."""
  def f(m):
    st = m.config["special_tokens"]
    z, _ = m.encode_images(batch["images"])
    x = lcl_lib.place_image_latents(batch["tokens"], m.decoder.embed(batch["tokens"]), m.image_proj(z),
                                    st["img"], num_chunks)
    return m.decoder(x, batch["segment_ids"], batch["positions"])
  return jax.jit(nn.apply(f, model))({"params": params})


def test_placement_puts_each_image_in_its_own_span_chunk_by_chunk():
  batch, owner = tiny_batch(seed=1)
  n, d = len(owner), 3
  latents = np.zeros((n, K, d), np.float32)
  for i in range(n):
    latents[i, :, 0] = i + 1          # which image
    latents[i, :, 1] = np.arange(K)   # which patch
  embeds = np.full(batch["tokens"].shape + (d,), -1.0, np.float32)
  out = np.asarray(lcl_lib.place_image_latents(batch["tokens"], embeds, latents, ST["img"], 2))
  assert sum(o is not None for o in owner) >= 4
  for i, o in enumerate(owner):
    if o is None:
      continue
    row, start = o
    np.testing.assert_array_equal(out[row, start + 1:start + 1 + K, 0], i + 1)
    np.testing.assert_array_equal(out[row, start + 1:start + 1 + K, 1], np.arange(K))
  not_img = batch["tokens"] != ST["img"]
  assert np.all(out[not_img] == -1.0)


def test_boi_index_finds_each_span_and_marks_padded_slots(model_and_params):
  batch, owner = tiny_batch(seed=2)
  pos, found = lcl_lib.boi_index(batch["tokens"], ST["boi"], 2, 4)
  length = batch["tokens"].shape[1]
  for i, o in enumerate(owner):
    c, j = divmod(i, 4)
    assert bool(found[c, j]) == (o is not None)
    if o is not None:
      row, start = o
      assert int(pos[c, j]) == (row - 2 * c) * length + start


def _first_span(seed):
  """A tiny batch and its first image that has a span: (batch, slot, row, start of the span's <boi>)."""
  batch, owner = tiny_batch(seed=seed)
  i = next(i for i, o in enumerate(owner) if o is not None)
  return (batch, i, *owner[i])


def test_context_vector_is_causal(model_and_params):
  """t at an image's <boi> ignores everything from that <boi> on, including the image itself."""
  model, params = model_and_params
  batch, i, row, start = _first_span(seed=3)
  base = run(model, params, batch)
  changed = {k: v.copy() for k, v in batch.items()}
  text_after = changed["tokens"][row, start + K + 2:] >= synthetic.FIRST_TEXT
  changed["tokens"][row, start + K + 2:][text_after] = synthetic.FIRST_TEXT + 7
  changed["images"][i] = 255 - changed["images"][i]
  out = run(model, params, changed)
  np.testing.assert_allclose(out["t"][i], base["t"][i], atol=1e-6)
  assert not np.allclose(out["v"][i], base["v"][i])


def test_image_latents_affect_nothing_before_their_span(model_and_params):
  model, params = model_and_params
  batch, owner = tiny_batch(seed=4)
  i = next(i for i, o in enumerate(owner) if o is not None)
  row, start = owner[i]
  base = hidden_states(model, params, batch)
  changed = {k: v.copy() for k, v in batch.items()}
  changed["images"][i] = 255 - changed["images"][i]
  out = hidden_states(model, params, changed)
  np.testing.assert_allclose(out[row, :start + 1], base[row, :start + 1], atol=1e-6)   # incl. its <boi>
  assert not np.allclose(out[row, start + 1:start + 2 + K], base[row, start + 1:start + 2 + K])
  other_rows = np.arange(len(batch["tokens"])) != row
  np.testing.assert_allclose(out[other_rows], base[other_rows], atol=1e-6)


def test_segments_never_see_each_other(model_and_params):
  model, params = model_and_params
  st = ST
  text = synthetic.FIRST_TEXT
  row = [st["bos"], text, text + 1, st["eos"], st["bos"], text + 2, text + 3, text + 4, st["eos"]]
  tokens = np.array([row + [0] * 3], np.int32)
  segs = np.array([[1] * 4 + [2] * 5 + [0] * 3], np.int32)
  pos = np.array([list(range(4)) + list(range(5)) + [0] * 3], np.int32)
  batch = dict(tokens=tokens, segment_ids=segs, positions=pos, images=np.zeros((1, 16, 16, 3), np.uint8),
               image_valid=np.zeros(1, bool))
  base = hidden_states(model, params, batch, num_chunks=1)
  changed = dict(batch, tokens=tokens.copy())
  changed["tokens"][0, 1:3] = text + 9                     # rewrite segment 1's text
  out = hidden_states(model, params, changed, num_chunks=1)
  np.testing.assert_allclose(out[0, 4:9], base[0, 4:9], atol=1e-6)
  # Segment 2 as a row of its own gives the same states: positions restart, nothing leaks in.
  alone = dict(batch, tokens=np.array([row[4:] + [0] * 7], np.int32),
               segment_ids=np.array([[1] * 5 + [0] * 7], np.int32),
               positions=np.array([list(range(5)) + [0] * 7], np.int32))
  np.testing.assert_allclose(hidden_states(model, params, alone, num_chunks=1)[0, :5], base[0, 4:9], atol=1e-5)


@pytest.mark.parametrize("require_text_context", [True, False])
def test_contrastive_validity_rules(require_text_context):
  config = tiny_config(require_text_context=require_text_context)
  model = models.LCL(config)
  text = synthetic.FIRST_TEXT
  span = [ST["boi"]] + [ST["img"]] * K + [ST["eoi"]]
  segments = [
      [ST["bos"]] + span + span + [text, ST["eos"]],  # A right after <s>, then B after A only (no text)
      [ST["bos"], ST["unk"]] + span + [text, ST["eos"]],  # C after <unk>: not text
      span + [text, ST["eos"]],                            # D at position 0 of its segment
      [ST["bos"], text] + span + [ST["eos"]],            # E after text
      [ST["bos"]] + span + [text, ST["eos"]],              # F: an image-first LAION pair packed after the others
  ]
  row, seg, pos = [], [], []
  for i, tokens in enumerate(segments):
    row += tokens
    seg += [i + 1] * len(tokens)
    pos += list(range(len(tokens)))
  batch = dict(tokens=np.array([row + [0, 0]], np.int32), segment_ids=np.array([seg + [0, 0]], np.int32),
               positions=np.array([pos + [0, 0]], np.int32),
               images=np.zeros((7, 16, 16, 3), np.uint8), image_valid=np.array([True] * 6 + [False]))
  params = nn.unbox(jax.jit(lambda b: model.init(jax.random.key(0), b))(batch)["params"])
  out = run(model, params, batch, num_chunks=1)
  valid = np.asarray(out["contrastive_valid"])
  #                                     A      B      C      D      E     F      (unused slot)
  if require_text_context:  # >= 1 text token before the <boi> in its segment
    np.testing.assert_array_equal(valid, [False, False, False, False, True, False, False])
  else:  # the authors' rule: only a <boi> with nothing before it but its segment's <s> is excluded
    np.testing.assert_array_equal(valid, [False, True, True, False, True, False, False])
  # A and F see the same context (<s> alone): identical t, a false negative of each other if both were kept.
  np.testing.assert_allclose(out["t"][0], out["t"][5], atol=1e-5)


def test_shapes_never_depend_on_data(model_and_params):
  """The whole forward + loss traces on abstract inputs: no boolean-mask indexing anywhere."""
  model, params = model_and_params
  batch, _ = tiny_batch()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  loss_config = vitb16_mmc4.get_config("runlocal").loss

  def loss(params, batch):
    out = model.apply({"params": params}, batch, num_chunks=2)
    return losses.lcl_loss(out, batch, loss_config, ST)[0]

  assert jax.eval_shape(jax.grad(loss), params, abstract) is not None
  jax.jit(loss).lower(params, abstract)


def test_bfloat16_runs_and_stays_close_to_float32(model_and_params):
  _, params = model_and_params
  batch, _ = tiny_batch(seed=5)
  out32 = run(models.LCL(tiny_config("float32")), params, batch)
  out16 = run(models.LCL(tiny_config("bfloat16")), params, batch)
  assert out16["logits"].dtype == jnp.float32 and out16["v"].dtype == jnp.float32
  for k in ("logits", "v", "t"):
    np.testing.assert_allclose(out16[k], out32[k], atol=0.1, rtol=0.05)
  assert np.corrcoef(np.ravel(out16["logits"]), np.ravel(out32["logits"]))[0, 1] > 0.999


def test_sharded_forward_and_loss_match_single_device(model_and_params):
  model, params = model_and_params
  mesh = sharding.make_mesh(dict(data=4, fsdp=2))
  c = sharding.num_data_shards(mesh)
  batch, _ = tiny_batch(seed=6, num_chunks=c)
  loss_config = vitb16_mmc4.get_config("runlocal").loss

  def loss_fn(params, batch, mesh):
    out = model.apply({"params": params}, batch, num_chunks=c)
    return losses.lcl_loss(out, batch, loss_config, ST, mesh=mesh)[0]

  want, want_grads = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b, None)))(params, batch)
  rules = sharding.rules(vitb16_mmc4.get_config("runlocal"))
  boxed = jax.eval_shape(lambda b: model.init(jax.random.key(0), b, num_chunks=c), batch)["params"]
  param_sharding = sharding.logical_shardings(boxed, mesh, rules)
  sharded_params = jax.device_put(params, param_sharding)
  sharded_batch = jax.device_put(batch, sharding.data_sharding(mesh))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    got, got_grads = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b, mesh)))(sharded_params, sharded_batch)
  np.testing.assert_allclose(got, want, rtol=2e-5)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=2e-5), got_grads, want_grads)


def test_every_parameter_has_logical_axes_and_fsdp_shards_large_ones():
  config = vitb16_mmc4.get_config("runlocal")
  boxed = models.abstract_params(config.model, batch_spec.smallest(config.model))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(x, nn.Partitioned) for x in leaves)
  mesh = sharding.make_mesh(dict(data=2, fsdp=4))
  shardings = jax.tree.leaves(sharding.logical_shardings(boxed, mesh, sharding.rules(config)))
  for leaf, s in zip(leaves, shardings):
    if leaf.value.size >= 4096 and any(d % 4 == 0 for d in leaf.value.shape):
      assert "fsdp" in str(s.spec), (leaf.names, s.spec)


def _tower_counts(config_module):
  from lcl_jax.summary import parameter_table
  return parameter_table(config_module.get_config().model)[1]


def test_parameter_counts_of_the_paper_configs():
  l14 = _tower_counts(vitl14_laion_mmc4)
  assert abs(l14["vision (ViT)"] - 303e6) / 303e6 < 0.01
  # OPT-125M blocks (85M) + 32000 x 768 tied embedding + 2048 x 768 positions.
  assert abs(l14["decoder"] - 111.2e6) / 111.2e6 < 0.01
  for module in (vitb16_mmc4, vitb16_laion):
    b16 = _tower_counts(module)
    assert abs(b16["vision (ViT)"] - 85.8e6) / 85.8e6 < 0.01


def test_context_vectors_equal_t_of_the_full_model(model_and_params):
  """The text-encoder entry point gives the same t as the full forward pass for the same prefix."""
  model, params = model_and_params
  batch, i, row, start = _first_span(seed=7)
  out = run(model, params, batch)
  tokens = np.where(np.arange(batch["tokens"].shape[1]) <= start, batch["tokens"][row], 0)[None]
  segs = np.where(np.arange(tokens.shape[1]) <= start, batch["segment_ids"][row], 0)[None]
  t = jax.jit(lambda p: model.apply({"params": p}, tokens, segs, batch["positions"][row][None],
                                    np.array([start]), method=models.LCL.context_vectors))(params)
  np.testing.assert_allclose(t[0], out["t"][i], atol=1e-5)


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_layers_compute_the_same_model(remat):
  """scan_layers stacks the same blocks: with the unrolled params restacked, outputs and gradients agree."""
  batch, _ = tiny_batch(seed=8)
  plain = models.LCL(tiny_config())
  config = tiny_config()
  for tower in (config.vit, config.decoder):
    tower.scan_layers, tower.remat = True, remat
  scanned = models.LCL(config)
  params = nn.unbox(jax.jit(lambda b: plain.init(jax.random.key(0), b, num_chunks=2))(batch)["params"])
  stacked = dict(params)
  for tower, depth in (("vit", config.vit.depth), ("decoder", config.decoder.depth)):
    blocks = [params[tower][f"block_{i}"] for i in range(depth)]
    rest = {k: v for k, v in params[tower].items() if not k.startswith("block_")}
    stacked[tower] = dict(rest, blocks=jax.tree.map(lambda *xs: jnp.stack(xs), *blocks))
  loss_config = vitb16_mmc4.get_config("runlocal").loss

  def loss(model, p):
    out = model.apply({"params": p}, batch, num_chunks=2)
    return losses.lcl_loss(out, batch, loss_config, ST)[0]

  want, want_grads = jax.jit(jax.value_and_grad(lambda p: loss(plain, p)))(params)
  got, got_grads = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(stacked)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(got_grads["decoder"]["blocks"]["mlp"]["fc1"]["kernel"][1],
                             want_grads["decoder"]["block_1"]["mlp"]["fc1"]["kernel"], atol=1e-5)
  np.testing.assert_allclose(got_grads["vit"]["blocks"]["attn"]["query"]["kernel"][0],
                             want_grads["vit"]["block_0"]["attn"]["query"]["kernel"], atol=1e-5)
