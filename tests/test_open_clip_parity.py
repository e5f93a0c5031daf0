"""Parity with the authors' code: their whole LCL model (open_clip ViT, attentive pool, CLIP-shaped text tower, LM
head; tiny, random weights; tests/fixtures written by tools/lcl_parity_fixture.py with their code and torch),
imported without torch, reproduces every output of theirs on a fixed interleaved batch, through lcl_jax's own
training loss; and the import, export and init_from commands carry it without loss."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import lcl_jax
from configs import lcl_vitb16_laion_openclip
from data_pipelines import batch_spec
from lcl_jax import config_checks, convert, export, losses, models, train_step as ts
from lcl_jax.interop import open_clip, torch_files
from lcl_jax.models import vit as vit_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "lcl_parity")
# tools/lcl_parity_fixture.py's TINY, as overrides of the config (also given to the commands).
TINY = {"vit.image_size": 32, "vit.patch_size": 8, "vit.width": 64, "vit.depth": 2, "vit.num_heads": 4,
        "vit.mlp_dim": 256, "embed_dim": 64, "pool_heads": 4, "decoder.width": 64, "decoder.depth": 2,
        "decoder.num_heads": 4, "decoder.mlp_dim": 256, "decoder.vocab_size": 40, "dtype": "float32"}
SPECIAL = dict(pad=0, bos=35, eos=36, img=37, boi=38, eoi=39)
SEQ_LEN = 48
FLAGS = [f"--config.model.{k}={v}" for k, v in TINY.items()] + [
    f"--config.model.special_tokens.{k}={v}" for k, v in SPECIAL.items()] + [f"--config.data.seq_len={SEQ_LEN}"]


def tiny_config():
  config = lcl_vitb16_laion_openclip.get_config("runlocal")
  for key, value in TINY.items():
    section, _, name = key.rpartition(".")
    (config.model[section] if section else config.model)[name] = value
  config.model.special_tokens = dict(SPECIAL)
  config.data.seq_len = SEQ_LEN
  return config


@pytest.fixture(scope="module")
def imported():
  config = tiny_config()
  model = json.loads(config.model.to_json())
  state = torch_files.read_state_dict(FIXTURE + ".pt")
  return config, state, open_clip.model_params(state, model), dict(np.load(FIXTURE + ".npz"))


def fixture_batch(want):
  tokens = jnp.asarray(want["tokens"], jnp.int32)
  return dict(tokens=tokens, segment_ids=(tokens != SPECIAL["pad"]).astype(jnp.int32),
              positions=jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape),
              images=jnp.asarray(want["images"]), image_valid=jnp.ones(want["images"].shape[0], bool))


def test_the_whole_model_and_its_loss_match_the_authors(imported):
  config, _, params, want = imported
  model, batch = models.LCL(config.model), fixture_batch(want)
  out, inter = jax.jit(lambda p, b: model.apply({"params": p}, b, capture_intermediates=True))(params, batch)
  z, v = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_images))(params, batch["images"])
  pool = vit_lib.pool_from_config(config.model)
  projected = pool.apply({"params": params["pool"]}, z, method=pool.project)
  hidden = inter["intermediates"]["decoder"]["__call__"][0]          # the stack's output, before any LayerNorm
  tokens = np.asarray(batch["tokens"])
  boi = (tokens == SPECIAL["boi"]) & (np.arange(SEQ_LEN)[None] > 0)
  valid = np.asarray(out["contrastive_valid"])
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  targets, weights = losses.generation_targets(batch["tokens"], batch["segment_ids"], config.model.special_tokens)
  at_targets = np.asarray(weights) > 0
  loss_config = dict(config.loss, contrastive_weight=1.0, generation_weight=1.0)
  _, metrics = jax.jit(lambda p, b: ts.loss_fn(p, b, jax.random.key(0), model=model, loss_config=loss_config,
                                               special_tokens=config.model.special_tokens, mesh=None,
                                               num_chunks=1))(params, batch)
  got = dict(patch_latents=z, pooled=v, projected=projected, boi_hidden=np.asarray(hidden)[boi],
             image_features=unit(np.asarray(out["v"])[valid]), text_features=unit(np.asarray(out["t"])[valid]),
             logits=np.asarray(out["logits"])[:, :-1][at_targets], labels=np.asarray(targets)[at_targets],
             logit_scale=out["logit_scale"], contrastive_loss=metrics["contrastive_loss"],
             caption_loss=metrics["generation_loss"])
  assert valid.tolist() == [True, True, False, True]  # the image-first pair's image has no context, as theirs
  diffs = {k: float(np.max(np.abs(np.asarray(g, np.float64) - want[k]))) for k, g in got.items()}
  print(f"\nlargest |ours - authors'| per output: {json.dumps(diffs)}")
  np.testing.assert_array_equal(got["labels"], want["labels"])
  for name, g in got.items():
    np.testing.assert_allclose(np.asarray(g), want[name], atol=2e-5, rtol=1e-5, err_msg=name)


def test_a_checkpoint_that_does_not_match_lists_every_problem(imported):
  config, state, _, _ = imported
  model = json.loads(config.model.to_json())
  broken = dict(state)
  del broken["visual.ln_pre.bias"], broken["lm_head.0.weight"]
  broken["visual.positional_embedding"] = broken["visual.positional_embedding"][:5]
  broken["text.extra_thing"] = np.zeros(3, np.float32)
  with pytest.raises(open_clip.ConversionError) as e:
    open_clip.model_params(broken, model)
  message = str(e.value)
  assert "missing: visual.ln_pre.bias, lm_head.0.weight" in message
  assert "visual.positional_embedding: (5, 64), expected (17, 64)" in message
  assert "unexpected: text.extra_thing" in message
  with pytest.raises(open_clip.ConversionError, match=r"model.pool='lcl_jax': the authors' model needs 'open_clip'"):
    open_clip.vision_params(state, dict(model, pool="lcl_jax"))
  with pytest.raises(open_clip.ConversionError, match=r"model.decoder.lm_head_norm=False"):
    open_clip.model_params(state, dict(model, decoder=dict(model["decoder"], lm_head_norm=False)))


def test_export_to_open_clip_is_the_exact_inverse_of_the_import(imported, tmp_path):
  config, state, params, _ = imported
  model = json.loads(config.model.to_json())
  back = open_clip.state_dict(params, model)
  assert sorted(back) == sorted(state)
  for k, v in state.items():
    assert back[k].shape == v.shape, k
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  for name, write in (("m.safetensors", torch_files.write_safetensors), ("m.pt", torch_files.write_torch_zip)):
    write(str(tmp_path / name), back)
    again = open_clip.model_params(torch_files.read_state_dict(str(tmp_path / name)), model)
    jax.tree.map(np.testing.assert_array_equal, again, params)
  vision = open_clip.vision_state_dict(params, model)
  assert sorted(vision) == sorted(k for k in state if k.startswith(open_clip.VISION_PREFIXES))
  # Full-size configs scan their layers (params stacked as `blocks` [depth, ...]): the same tensors, stacked.
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  scanned_config = config.copy_and_resolve_references()
  scanned_config.model.vit.scan_layers = scanned_config.model.decoder.scan_layers = True
  scanned = json.loads(scanned_config.model.to_json())
  stacked = open_clip.model_params(state, scanned)
  shapes = lambda t: jax.tree.map(np.shape, t)
  smallest = batch_spec.smallest(scanned_config.model)
  assert shapes(stacked) == shapes(nn.unbox(models.abstract_params(scanned_config.model, smallest)))
  np.testing.assert_array_equal(stacked["decoder"]["blocks"]["mlp"]["fc1"]["kernel"][1],
                                params["decoder"]["block_1"]["mlp"]["fc1"]["kernel"])
  back = open_clip.state_dict(stacked, scanned)
  assert sorted(back) == sorted(state)
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_a_converted_model_trains_evaluates_and_exports_back(tmp_path, demo_cache_dir):
  """What a user of the released checkpoint runs, at runlocal size (CLIP's BPE on the demo corpus): their state
  dict (here a random one of the config's shapes, as a torch .pt file) -> `lcl_jax.convert` -> `config.init_from`:
  at LR 0 the first checkpoint holds exactly the imported weights; `lcl_jax.evaluate --init_from` runs the zero-shot
  evaluator on them; `lcl_jax.export --format=open_clip` of the run gives the same tensors back, bit for bit; an
  architecture that differs is refused in one error before training."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from lcl_jax import checkpoint, evaluate, sharding, train  # pylint: disable=import-outside-toplevel
  del demo_cache_dir  # the demo corpus, built once for the session
  config = lcl_vitb16_laion_openclip.get_config("runlocal")
  config.model.dtype = "float32"
  model = models.LCL(config.model)
  batch = batch_spec.zeros(batch_spec.shapes(rows=2, images=2, seq_len=config.data.seq_len,
                                             image_size=config.model.vit.image_size))
  params = nn.unbox(jax.jit(lambda b: model.init(jax.random.key(1), b))(batch)["params"])
  state = open_clip.state_dict(params, json.loads(config.model.to_json()))
  torch_files.write_torch_zip(str(tmp_path / "theirs.pt"), state)
  artefact = str(tmp_path / "imported")
  proc = subprocess.run([sys.executable, "-m", "lcl_jax.convert", "--from=open_clip",
                         "--config=configs/lcl_vitb16_laion_openclip.py:runlocal", "--config.model.dtype=float32",
                         f"--checkpoint={tmp_path / 'theirs.pt'}", f"--output={artefact}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "whole model" in proc.stdout, proc.stderr[-3000:]

  config.init_from = artefact
  config.optim.update(total_steps=1, warmup_steps=1, peak_lr=0.0)
  config.ckpt.every_steps = 1
  zero_shot = config.evals.zeroshot_digits
  config.evals = ml_collections.ConfigDict()
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  restored, step = checkpoint.restore_params(config, workdir, sharding.make_mesh(config.sharding.mesh))
  assert step == 1
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), restored, params)

  config.evals.zeroshot_digits = zero_shot
  results = evaluate.evaluate(config, None, init_from=artefact)["results"]["zeroshot_digits"]
  assert 0.0 <= results["top1"] <= 1.0, results

  out = export.export_open_clip(config, workdir, str(tmp_path / "out"))
  for name in ("open_clip_model.safetensors", "open_clip_model.pt"):
    back = torch_files.read_state_dict(os.path.join(out, name))
    assert sorted(back) == sorted(state)
    for k, v in back.items():
      np.testing.assert_array_equal(v, state[k], err_msg=k)

  bad = config.copy_and_resolve_references()
  bad.model.vit.update(mlp_dim=256, activation="quick_gelu")
  with pytest.raises(config_checks.ConfigError, match=r"does not fit this config's model: model.vit.activation: "
                     r"artefact 'gelu', config 'quick_gelu'; vit\['block_0'\]\['mlp'\]"):
    train.run(bad, str(tmp_path / "bad"))


def test_the_convert_command_writes_what_lcl_jax_reads(imported, tmp_path):
  _, _, _, want = imported
  run = lambda checkpoint, out, *extra: subprocess.run(
      [sys.executable, "-m", "lcl_jax.convert", "--from=open_clip",
       "--config=configs/lcl_vitb16_laion_openclip.py:runlocal", f"--checkpoint={checkpoint}", f"--output={out}",
       *FLAGS, *extra], cwd=REPO, capture_output=True, text=True, timeout=300)
  proc = run(FIXTURE + ".pt", tmp_path / "vision", "--vision_only")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "vision encoder" in proc.stdout
  z, v = lcl_jax.load_vision_encoder(str(tmp_path / "vision"))(want["images"])
  np.testing.assert_allclose(np.asarray(z), want["patch_latents"], atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(v), want["pooled"], atol=2e-5, rtol=1e-5)
  proc = run(os.path.join(REPO, "tests", "fixtures", "torch_small.pt"), tmp_path / "wrong")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("lcl_jax: The checkpoint does not match"), proc.stderr
