"""Evaluators on models whose answers are known: class-indicator towers must score 100% (and exactly the rate of a
known relabelling when labels are shuffled), separable features must be probed to ~100% and random labels to ~chance,
the last partial batch counts once, perplexity matches a row-by-row reference, TFDS sets load via mock_data."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import common, vitb16_mmc4
from data_pipelines import augment, batch_spec
from data_pipelines.demo import ensure_demo
from data_pipelines.demo.text import NAMES
from data_pipelines.tokenizer import Tokenizer
from lcl_jax import evaluators, losses, models, sharding
from lcl_jax.evaluators import base, datasets, features
from tests.test_model import tiny_config

SIZE, K, D_V, CLASSES = 16, 4, 12, 10


class IndicatorTowers(nn.Module):
  """Known answers by construction. An image's class is its first pixel // 20 and its "hot" patch its second
  pixel // 60: v = one-hot(class); z = noise + 3 * one-hot(class) at the hot patch. A text's vector is the sum of
  its tokens' rows of `table` (the class-name tokens' rows are class one-hots, every other row is zero)."""
  vocab_size: int

  def setup(self):
    self.table = self.param("table", nn.initializers.zeros, (self.vocab_size, CLASSES))

  def encode_images(self, images):
    cls = images[:, 0, 0, 0].astype(jnp.int32) // 20
    hot = images[:, 0, 0, 1].astype(jnp.int32) // 60
    noise = images[:, 1:1 + K, :D_V, 2].astype(jnp.float32) / 255.0 * 0.5                   # [N, K, D_V]
    signal = 3.0 * jax.nn.one_hot(hot, K)[:, :, None] * jax.nn.one_hot(cls, D_V)[:, None, :]
    return noise + signal, jax.nn.one_hot(cls, CLASSES)

  def context_vectors(self, tokens, segment_ids, positions, boi_position):
    del positions, boi_position
    return jnp.sum(self.table[tokens] * (segment_ids > 0)[..., None], axis=1)


def make_images(labels, rng):
  n = len(labels)
  images = np.full((n, SIZE, SIZE, 3), 255, np.uint8)
  images[:, 0, 0, 0] = 10 + 20 * np.asarray(labels)
  images[:, 0, 0, 1] = 30 + 60 * rng.integers(0, K, n)
  images[:, 1:1 + K, :D_V, 2] = rng.integers(0, 256, (n, K, D_V))
  return images


def write_set(path, images, labels, captions):
  np.savez(path, images=images, labels=np.asarray(labels, np.int32), captions=np.asarray(captions),
           class_names=np.asarray(NAMES), templates=np.asarray(["Here is a handwritten {}.", "Look at this {}."]))
  return str(path)


@pytest.fixture(scope="module")
def towers():
  """(config, model, mesh, params) of the indicator towers, with the demo tokenizer's class-name tokens mapped."""
  tokenizer = Tokenizer(ensure_demo().tokenizer_path)
  table = np.zeros((tokenizer.vocab_size, CLASSES), np.float32)
  for c, name in enumerate(NAMES):
    ids = tokenizer.encode(f"a {name}")[1:]
    assert len(ids) == 1 and not table[ids[0]].any(), "each class name must be its own single piece"
    table[ids[0], c] = 1.0
  config = vitb16_mmc4.get_config("runlocal")
  config.model.vit.image_size = SIZE
  mesh = sharding.make_mesh(config.sharding.mesh)
  return config, IndicatorTowers(tokenizer.vocab_size), mesh, {"table": table}


def build(towers, **specs):
  """-> {name: evaluator} (ConfigDict orders names its own way)."""
  config, model, mesh, _ = towers
  config = config.copy_and_resolve_references()
  config.evals = specs
  return {e.name: e for e in evaluators.from_config(config, model=model, mesh=mesh)}


def test_runner_pads_the_last_batch_and_keeps_every_example_once(towers):
  _, _, mesh, _ = towers
  runner = features.ShardedRunner(mesh, ())
  x = np.arange(13 * 3, dtype=np.float32).reshape(13, 3)
  fn = lambda p, b: dict(s=b["x"].sum(axis=1) * p, i=b["i"])
  out = runner.map(fn, jnp.float32(2.0), ({"x": x[s:s + 8], "i": np.arange(s, min(s + 8, 13))}
                                          for s in range(0, 13, 8)), batch_size=8)
  np.testing.assert_array_equal(out["i"], np.arange(13))
  np.testing.assert_allclose(out["s"], 2 * x.sum(axis=1))


def test_zero_shot_is_perfect_on_indicators_and_counts_the_partial_batch_once(towers, tmp_path):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, CLASSES, 13)
  images = make_images(labels, rng)
  shuffled = rng.permutation(labels)
  true_set = write_set(tmp_path / "true.npz", images, labels, [f"a {NAMES[c]}" for c in labels])
  shuffled_set = write_set(tmp_path / "shuffled.npz", images, shuffled, [f"a {NAMES[c]}" for c in labels])
  spec = dict(type="zero_shot", batch_size=8, grid_size=6)
  evals = build(towers, right=dict(spec, dataset=true_set), wrong=dict(spec, dataset=shuffled_set))
  right, wrong = evals["right"], evals["wrong"]
  params = towers[3]
  result = right.run(params, 0)
  assert result.scalars == dict(top1=1.0, top5=1.0, num_examples=13.0)
  assert result.images["predictions"].dtype == np.uint8 and result.images["predictions"].shape[-1] == 3
  assert result.images["confusion"].ndim == 3
  # Predictions are the images' true classes, so top-1 against shuffled labels is exactly their agreement.
  assert wrong.run(params, 0).scalars["top1"] == pytest.approx(np.mean(shuffled == labels))


def test_retrieval_recalls_everything_on_indicators_and_nothing_when_captions_are_shifted(towers, tmp_path):
  rng = np.random.default_rng(1)
  labels = np.arange(30) % CLASSES
  images = make_images(labels, rng)
  right_set = write_set(tmp_path / "right.npz", images, labels, [f"a handwritten {NAMES[c]}" for c in labels])
  shifted_set = write_set(tmp_path / "shifted.npz", images, labels,
                          [f"a handwritten {NAMES[(c + 1) % CLASSES]}" for c in labels])
  evals = build(towers, right=dict(type="retrieval", dataset=right_set, batch_size=16),
                shifted=dict(type="retrieval", dataset=shifted_set, batch_size=16))
  right, shifted = evals["right"], evals["shifted"]
  result = right.run(towers[3], 0)
  assert {k: v for k, v in result.scalars.items() if "_r" in k} == {
      f"{d}_r{k}": 1.0 for d in ("t2i", "i2t") for k in (1, 5, 10)}
  assert result.scalars["num_images"] == 30 and result.scalars["num_texts"] == CLASSES  # identical captions merge
  assert result.images["queries"].ndim == 3
  wrong = shifted.run(towers[3], 0).scalars
  assert wrong["t2i_r1"] == 0.0 and wrong["i2t_r1"] == 0.0


@pytest.mark.parametrize("kind", ["linear_probe", "attention_probe"])
def test_probes_separate_separable_features_and_not_random_labels(towers, tmp_path, kind):
  rng = np.random.default_rng(2)
  labels = rng.integers(0, CLASSES, 240)
  images = make_images(labels, rng)
  random_labels = rng.integers(0, CLASSES, 240)   # unrelated to the images: nothing to learn
  spec = dict(type=kind, batch_size=128, train_fraction=0.5)
  if kind == "attention_probe":
    spec.update(num_heads=2, steps=100, probe_batch_size=64, learning_rate=1e-2)
  evals = build(towers, separable=dict(spec, dataset=write_set(tmp_path / "a.npz", images, labels, [""] * 240)),
                random=dict(spec, dataset=write_set(tmp_path / "b.npz", images, random_labels, [""] * 240)))
  separable, random = evals["separable"], evals["random"]
  result = separable.run(towers[3], 0).scalars
  assert result["num_train"] == 120 and result["num_test"] == 120
  assert result["top1"] >= 0.95
  assert random.run(towers[3], 0).scalars["top1"] <= 0.3   # chance is 0.1


def test_tfds_sets_load_through_the_eval_transform(towers):
  with tfds.testing.mock_data(num_examples=5):
    evals = build(towers, coco=dict(type="retrieval", dataset="coco_captions", split="test",
                                    caption_key="captions/text", batch_size=8),
                  cifar=dict(type="zero_shot", dataset="cifar10", split="test", batch_size=8),
                  probe=dict(type="linear_probe", dataset="cifar10", split="test", train_split="train",
                             max_train_examples=4, batch_size=8))
    ds = tfds.builder("coco_captions").as_dataset(split="test")
    captions = {c for ex in tfds.as_numpy(ds) for c in ex["captions"]["text"]}
    result = evals["coco"].run(towers[3], 0).scalars
    shots = evals["cifar"].run(towers[3], 0).scalars
    probe = evals["probe"].run(towers[3], 0).scalars
  # 5 images of random sizes (resized and cropped to 16 px), their captions merged by text.
  assert result["num_images"] == 5 and result["num_texts"] == len(captions)
  assert result["t2i_r5"] == 1.0            # every caption's image is among the only 5
  assert shots["num_examples"] == 5 and 0.0 <= shots["top1"] <= shots["top5"] <= 1.0
  assert probe["num_train"] == 4 and probe["num_test"] == 5     # trained on the train split, tested on test


def test_from_config_rejects_unknown_types_keys_and_missing_data(towers, tmp_path):
  with pytest.raises(ValueError, match="expected one of"):
    build(towers, x=dict(type="zeroshot"))
  with pytest.raises(ValueError, match="unknown keys \\['tempaltes'\\]"):
    build(towers, x=dict(type="zero_shot", tempaltes=("{}",)))
  # A missing dataset or split fails when the evaluators are built (training start), not at their first run.
  with pytest.raises(ValueError, match="Unknown split 'validation'"):
    build(towers, x=dict(type="perplexity", dataset="lcl_mmc4", split="validation"))   # the demo has only train
  with pytest.raises(AssertionError, match="could not find data"):
    build(towers, x=dict(type="zero_shot", dataset="cifar10", data_dir=str(tmp_path)))
  config, model, mesh, _ = towers
  config = config.copy_and_resolve_references()
  config.evals = common.evals_config(True)
  config.model.vit.image_size = 32   # the demo's own size: no resizing
  assert sorted(e.spec.type for e in evaluators.from_config(config, model=model, mesh=mesh)) == sorted(
      ["zero_shot", "retrieval", "linear_probe", "attention_probe", "perplexity"])


def test_perplexity_counts_every_target_once_and_matches_a_row_by_row_reference(towers):
  config = vitb16_mmc4.get_config("runlocal")
  config.model = tiny_config()
  config.model.decoder.vocab_size = Tokenizer(ensure_demo().tokenizer_path).vocab_size
  config.data.seq_len = 48
  config.evals = dict(ppl=dict(type="perplexity", dataset="demo", max_examples=30, rows_per_batch=8,
                               images_per_batch=16))
  mesh = towers[2]
  model = models.LCL(config.model)
  (evaluator,) = evaluators.from_config(config, model=model, mesh=mesh)
  params = nn.unbox(jax.jit(lambda: model.init(jax.random.key(3), batch_spec.zeros(
      batch_spec.smallest(config.model)))["params"])())
  result = evaluator.run(params, 0).scalars

  # Every pair gives its caption tokens, <boi> and </s> as targets, wherever its image sits.
  tokenizer = evaluator.context.tokenizer
  captions = np.load(ensure_demo().eval_path)["captions"][:30]
  assert result["num_targets"] == sum(len(tokenizer.encode(str(c))) + 2 for c in captions)
  rows = evaluator.rows()
  assert result["num_rows"] == len(rows) > 8   # more than one batch: the last one is partial

  @jax.jit
  def row_nll(params, batch):
    out = model.apply({"params": params}, batch)
    loss, m = losses.next_token_loss(out["logits"], batch["tokens"], batch["segment_ids"],
                                     dict(config.model.special_tokens))
    return loss * m["num_text_targets"], m["num_text_targets"]

  most = max(len(r.images) for r in rows)
  total = count = 0.0
  for row in rows:   # one row at a time, unsharded, its images in span order then empty slots
    images = np.zeros((most, 16, 16, 3), np.uint8)
    images[:len(row.images)] = [augment.load(data, 16, None) for data in row.images]
    batch = dict(tokens=row.tokens[None], segment_ids=row.segment_ids[None], positions=row.positions[None],
                 images=images, image_valid=np.arange(most) < len(row.images))
    nll, n = row_nll(params, batch)
    total, count = total + float(nll), count + float(n)
  assert count == result["num_targets"]
  np.testing.assert_allclose(result["nll"], total / count, rtol=1e-5)
  np.testing.assert_allclose(result["perplexity"], np.exp(total / count), rtol=1e-5)
