"""Parity with the authors' code: their LCL vision encoder (open_clip ViT + attentive pool, tiny, random weights;
tests/fixtures written by tools/lcl_parity_fixture.py with their code and torch) imported without torch
reproduces their patch latents, pooled vector and projected patches, directly and through an exported artefact."""
import json
import os

import jax
import numpy as np
import pytest

import lcl_jax
from configs import lcl_vitb16_laion_openclip
from lcl_jax import config_checks, export
from lcl_jax.interop import open_clip, torch_files
from lcl_jax.models import vit as vit_lib

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "lcl_vision_parity")


@pytest.fixture(scope="module")
def imported():
  config = lcl_vitb16_laion_openclip.get_config("runlocal")
  config.model.vit.update(image_size=32, patch_size=8, width=64, depth=2, num_heads=4, mlp_dim=256)
  config.model.update(embed_dim=64, pool_heads=4, dtype="float32")
  model = json.loads(config.model.to_json())
  state = torch_files.read_state_dict(FIXTURE + ".pt")
  return model, state, open_clip.vision_params(state, model), dict(np.load(FIXTURE + ".npz"))


def test_vision_encoder_matches_the_authors(imported, tmp_path):
  model, _, params, want = imported
  z, v = jax.jit(lambda p, x: export.VisionTower(model).apply({"params": p}, x))(params, want["images"])
  pool = vit_lib.pool_from_config(model)
  projected = pool.apply({"params": params["pool"]}, z, method=pool.project)
  diffs = {name: float(np.max(np.abs(np.asarray(got) - want[name])))
           for name, got in (("patch_latents", z), ("pooled", v), ("projected", projected))}
  print(f"\nlargest |ours - authors'| per output: {diffs}")
  for name, got in (("patch_latents", z), ("pooled", v), ("projected", projected)):
    np.testing.assert_allclose(np.asarray(got), want[name], atol=2e-5, rtol=1e-5, err_msg=name)
  # The converter's artefact is what downstream code loads.
  path = export.write_artefact(str(tmp_path / "imported"), model, params, step=None, name="parity")
  encoder = lcl_jax.load_vision_encoder(path)
  z2, v2 = encoder(want["images"])
  np.testing.assert_allclose(np.asarray(z2), want["patch_latents"], atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(v2), want["pooled"], atol=2e-5, rtol=1e-5)


def test_a_checkpoint_that_does_not_match_lists_every_problem(imported):
  model, state, _, _ = imported
  broken = dict(state)
  del broken["visual.ln_pre.bias"]
  broken["visual.positional_embedding"] = broken["visual.positional_embedding"][:5]
  broken["visual.extra_thing"] = np.zeros(3, np.float32)
  with pytest.raises(open_clip.ConversionError) as e:
    open_clip.vision_params(broken, model)
  message = str(e.value)
  assert "missing: visual.ln_pre.bias" in message
  assert "visual.positional_embedding: (5, 64), expected (17, 64)" in message
  assert "unexpected: visual.extra_thing" in message
  plain = dict(model, pool="lcl_jax")
  with pytest.raises(open_clip.ConversionError, match="model.pool must be 'open_clip'"):
    open_clip.vision_params(state, plain)


def test_the_openclip_config_trains_with_the_pools_projection_as_image_latents():
  """model.pool = "open_clip": the decoder reads the pool's value path (no image_proj of ours), as the authors'."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from lcl_jax import models  # pylint: disable=import-outside-toplevel
  config = lcl_vitb16_laion_openclip.get_config("runlocal")
  model = models.LCL(config.model)
  batch = models.dummy_batch(config.model, rows=2, images=2, seq_len=config.data.seq_len)
  params = nn.unbox(jax.jit(lambda b: model.init(jax.random.key(0), b))(batch)["params"])
  assert "image_proj" not in params and "cls_token" in params["vit"] and "ln_pre" in params["vit"]
  assert "bias" not in params["vit"]["patch_embed"] and "bias" not in params["pool"]["out"]
  out = jax.jit(lambda p, b: model.apply({"params": p}, b))(params, batch)
  assert out["v"].shape == (2, config.model.embed_dim) and np.isfinite(np.asarray(out["hidden"])).all()


def test_training_starts_from_the_imported_encoder(imported, tmp_path, demo_cache_dir):
  """config.init_from: the imported vision encoder replaces the fresh ViT and pool (the rest and the optimizer stay
  fresh). At LR 0 the first checkpoint holds exactly the imported weights."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from lcl_jax import evaluate, sharding, train  # pylint: disable=import-outside-toplevel
  del demo_cache_dir  # the demo corpus, built once for the session
  model, _, params, _ = imported
  artefact = export.write_artefact(str(tmp_path / "imported"), model, params, step=None, name="parity")
  config = lcl_vitb16_laion_openclip.get_config("runlocal")
  config.model.vit.mlp_dim = 256  # the fixture's ViT; the rest of runlocal's (64 wide, 2 layers, 4 heads) is its
  config.model.dtype = "float32"
  config.init_from = artefact
  config.optim.update(total_steps=1, warmup_steps=1, peak_lr=0.0)
  config.ckpt.every_steps = 1
  config.evals = ml_collections.ConfigDict()
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  restored, step = evaluate.restore_params(config, workdir, sharding.make_mesh(config.sharding.mesh))
  assert step == 1
  for key in ("vit", "pool"):
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), restored[key], params[key])
  # And back out as the authors' tensors (lcl_jax.export --format=open_clip): the fixture's own values.
  path = export.export_open_clip(config, workdir, str(tmp_path / "out"))
  back, (_, state, _, _) = torch_files.read_state_dict(path), imported
  assert sorted(back) == sorted(k for k in state if k.startswith(("visual.", "pool_project.")))
  for k, v in back.items():
    np.testing.assert_array_equal(v, state[k], err_msg=k)
  bad = config.copy_and_resolve_references()
  bad.model.vit.update(mlp_dim=128, activation="quick_gelu")
  with pytest.raises(config_checks.ConfigError, match=r"does not fit this config's model: model.vit.activation: "
                     r"artefact 'gelu', config 'quick_gelu'; vit\['block_0'\]\['mlp'\]"):
    train.run(bad, str(tmp_path / "bad"))


def test_export_to_open_clip_is_the_exact_inverse_of_the_import(imported, tmp_path):
  model, state, params, _ = imported
  back = open_clip.vision_state_dict(params, model)
  vision = {k: v for k, v in state.items() if k.startswith(("visual.", "pool_project."))}
  assert sorted(back) == sorted(vision)
  for k, v in vision.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  path = str(tmp_path / "open_clip_vision.safetensors")
  torch_files.write_safetensors(path, back)
  again = open_clip.vision_params(torch_files.read_state_dict(path), model)
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_the_import_command_writes_what_load_vision_encoder_reads(imported, tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  _, _, _, want = imported
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  tiny = ["--config.model.vit.image_size=32", "--config.model.vit.patch_size=8", "--config.model.vit.width=64",
          "--config.model.vit.depth=2", "--config.model.vit.num_heads=4", "--config.model.vit.mlp_dim=256",
          "--config.model.embed_dim=64", "--config.model.pool_heads=4", "--config.model.dtype=float32"]
  run = lambda checkpoint, out: subprocess.run(
      [sys.executable, "-m", "lcl_jax.interop.open_clip", "--config=configs/lcl_vitb16_laion_openclip.py:runlocal",
       f"--checkpoint={checkpoint}", f"--output={out}", *tiny], cwd=repo, capture_output=True, text=True, timeout=300)
  proc = run(FIXTURE + ".pt", tmp_path / "vision")
  assert proc.returncode == 0, proc.stderr[-3000:]
  _, v = lcl_jax.load_vision_encoder(str(tmp_path / "vision"))(want["images"])
  np.testing.assert_allclose(np.asarray(v), want["pooled"], atol=2e-5, rtol=1e-5)
  proc = run(os.path.join(os.path.dirname(FIXTURE), "torch_small.pt"), tmp_path / "wrong")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("lcl_jax: The checkpoint does not match"), proc.stderr
