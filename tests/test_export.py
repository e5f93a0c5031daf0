"""Checkpoint -> evaluate / export: the params restored are the ones saved (latest or a chosen step), evaluation
writes scalars, pictures and TensorBoard events, and an exported encoder reloaded in a fresh process (no configs, no
orbax, no tensorflow) gives the training state's features."""
import glob
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from data_pipelines import augment
from data_pipelines.tokenizer import Tokenizer
from lcl_jax import checkpoint, evaluate, export, models, sharding, state as state_lib
from lcl_jax.evaluators import datasets, perplexity
from tests import xla_flags
from tests.test_model import tiny_config
from tests.test_train import tiny_train_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A workdir with checkpoints at steps 3 and 5 (different params) of the tiny model, as training leaves it."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_train_config()
  config.model.decoder.vocab_size = 512  # the demo tokenizer's ids
  mesh = sharding.make_mesh(config.sharding.mesh)
  spec = state_lib.state_spec(config, mesh)
  rng = np.random.default_rng(0)

  def random_state():
    # Random values of the train state's shapes, placed with its shardings: what a trained state looks like to
    # restore and export, without compiling the initialiser.
    return jax.tree.map(lambda s: (rng.normal(0.0, 0.05, s.shape) if np.issubdtype(s.dtype, np.floating)
                                   else np.zeros(s.shape)).astype(s.dtype), spec.abstract)

  states = {3: random_state(), 5: random_state()}
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, keep=3, async_save=False)
  for step, state in states.items():
    ckpt.save(step, jax.device_put(state, spec.shardings), {"position": step}, wait=True)
  ckpt.close()
  return config, workdir, states[3].params, states[5].params


def test_restore_params_takes_the_latest_or_the_given_step(run_dir):
  config, workdir, params3, params5 = run_dir
  mesh = sharding.make_mesh(config.sharding.mesh)
  got, step = checkpoint.restore_params(config, workdir, mesh)
  assert step == 5
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), params5)
  got, step = checkpoint.restore_params(config, workdir, mesh, step=3)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), params3)
  with pytest.raises(FileNotFoundError, match="step 4"):
    checkpoint.restore_params(config, workdir, mesh, step=4)


def test_exported_encoder_reloaded_in_a_fresh_process_gives_the_training_features(run_dir, tmp_path):
  config, workdir, params3, _ = run_dir
  with open(os.path.join(workdir, "config.json"), "w") as f:   # what training leaves next to its checkpoints
    f.write(config.to_json())
  export.export(export.read_run_config(workdir), workdir, str(tmp_path / "encoder"), step=3)
  export.export(config, workdir, str(tmp_path / "whole"), step=3, whole_model=True)

  images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
  np.save(tmp_path / "images.npy", images)
  script = textwrap.dedent(f"""
      import sys, numpy as np, lcl_jax
      images = np.load({str(tmp_path / 'images.npy')!r})
      for name in ("encoder", "whole"):
        enc = lcl_jax.load_vision_encoder({str(tmp_path)!r} + "/" + name)
        z, v = enc(images)
        np.save({str(tmp_path)!r} + f"/{{name}}_z.npy", np.asarray(z))
        np.save({str(tmp_path)!r} + f"/{{name}}_v.npy", np.asarray(v))
      print(enc.step, enc.num_patches, enc(np.zeros((2, 40, 24, 3), np.uint8))[1].shape)
      heavy = [m for m in ("configs", "ml_collections", "orbax", "tensorflow") if m in sys.modules]
      print("heavy:", heavy)
  """)
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags.with_devices(None))
  out = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "3 4 (2, 64)" in out.stdout and "heavy: []" in out.stdout, out.stdout

  model = models.LCL(config.model)
  z, v = jax.jit(lambda p, x: model.apply({"params": p}, x, method=models.LCL.encode_images))(params3, images)
  assert np.std(np.asarray(z)) > 1e-3 and np.std(np.asarray(v)) > 1e-3   # features worth comparing
  for name in ("encoder", "whole"):
    np.testing.assert_allclose(np.load(tmp_path / f"{name}_z.npy"), z, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / f"{name}_v.npy"), v, atol=1e-5)
  with open(tmp_path / "encoder" / "config.json") as f:
    meta = json.load(f)
  assert meta["contents"] == "vision_encoder" and "decoder" not in meta["model"] and meta["step"] == 3
  with open(tmp_path / "whole" / "config.json") as f:
    meta = json.load(f)
  assert meta["contents"] == "whole_model" and meta["model"]["decoder"]["vocab_size"] == 512
  assert Tokenizer(str(tmp_path / "whole" / meta["tokenizer"])).vocab_size == 512


def test_evaluate_writes_scalars_pictures_and_events(run_dir):
  config, workdir, _, _ = run_dir
  config = config.copy_and_resolve_references()
  config.evals = dict(
      zeroshot=dict(type="zero_shot", dataset="demo", max_examples=24, batch_size=16),
      retrieval=dict(type="retrieval", dataset="demo", max_examples=24, batch_size=16),
      probe=dict(type="linear_probe", dataset="demo", max_examples=40, batch_size=16))
  out = evaluate.evaluate(config, workdir)
  assert out["step"] == 5 and sorted(out["results"]) == ["probe", "retrieval", "zeroshot"]
  assert out["results"]["zeroshot"]["num_examples"] == 24 and out["results"]["probe"]["num_test"] == 20
  assert 0.0 <= out["results"]["zeroshot"]["top1"] <= 1.0
  folder = os.path.join(workdir, "eval", "step_00000005")
  assert sorted(os.listdir(folder)) == sorted([
      "probe.json", "retrieval.json", "retrieval-queries.png", "zeroshot.json", "zeroshot-confusion.png",
      "zeroshot-predictions.png"])
  with open(os.path.join(folder, "zeroshot.json")) as f:
    assert json.load(f)["top1"] == out["results"]["zeroshot"]["top1"]
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))


def test_pipeline_evaluators_and_exported_encoder_give_the_same_eval_pixels(tmp_path):
  """One eval transform: an odd-sized image (37 x 53, both shrunk and cropped) becomes the same bytes through the
  pipeline's eval path, the evaluators' image sets and perplexity rows, and the exported encoder's input."""
  image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
  size = 16
  pipeline = augment.load(datasets.encode_png(image), size, None)
  assert pipeline.shape == (size, size, 3)
  np.savez(tmp_path / "one.npz", images=image[None], labels=np.zeros(1, np.int32))
  (evaluator_set,) = datasets.load_npz(str(tmp_path / "one.npz"), image_size=size).batches(8)
  from data_pipelines.rows import Row  # pylint: disable=import-outside-toplevel
  row = Row(tokens=np.zeros(8, np.int32), segment_ids=np.zeros(8, np.int32), positions=np.zeros(8, np.int32),
            images=[datasets.encode_png(image)], doc_ids=["0"])
  (ppl_batch,) = perplexity.pack_rows([row], num_chunks=1, rows_per_chunk=1, images_per_chunk=1, image_size=size)
  model = json.loads(tiny_config().to_json())
  model["vit"]["image_size"] = size
  encoder = export.VisionEncoder(model, params=None)
  encoder._apply = lambda params, images: images  # pylint: disable=protected-access  # what the ViT is given
  exported = np.asarray(encoder(image[None]))
  for other in (evaluator_set["images"][0], ppl_batch["images"][0], exported[0]):
    assert other.dtype == np.uint8 and other.tobytes() == pipeline.tobytes()
