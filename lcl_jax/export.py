"""The trained vision encoder as a standalone artefact, and the loader that needs nothing else from a run.

  python -m lcl_jax.export --workdir=DIR --output=PATH [--checkpoint_step=S] [--whole_model] [--config=CFG[:ARG]]

The config comes from --config, else from <workdir>/config.json (written by training). The artefact is a folder:
  config.json     {"format": "lcl_jax.vision_encoder", "version": 1, "contents": "vision_encoder" | "whole_model",
                   "step": S, "name": run name, "model": the run's model section (vit, embed_dim, pool_heads, dtypes,
                   and for a whole model the decoder and special tokens)}
  params.msgpack  flax.serialization msgpack of the float32 parameters: {"vit": ..., "pool": ...}, or every
                  parameter of the LCL model with --whole_model (the vision encoder is its "vit" and "pool").
  tokenizer file with --whole_model (the decoder's ids mean nothing without it): config.json's "tokenizer" names
                  it and "tokenizer_kind" says which: "sentencepiece" (tokenizer.model) or "clip_bpe" (CLIP's BPE
                  merges, bpe_simple_vocab_16e6.txt.gz).
`lcl_jax.load_vision_encoder(PATH)` reads either kind (see lcl_jax/EXPORT.md). The loader imports flax and
lcl_jax.models only: no configs/, ml_collections, orbax or tensorflow.
"""
import json
import os
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from data_pipelines import augment, batch_spec
from lcl_jax.models.vit import pool_from_config, vit_from_config

FORMAT, VERSION = "lcl_jax.vision_encoder", 1
CONFIG_FILE, PARAMS_FILE = "config.json", "params.msgpack"
VISION_KEYS = ("vit", "embed_dim", "pool_heads", "pool", "dtype", "param_dtype")  # a vision encoder's model section


class VisionTower(nn.Module):
  """The LCL model's vision half under the same parameter names (`vit`, `pool`):
  images uint8 [N, S, S, 3] -> (patch latents z [N, K, D_v], pooled v [N, D_e] f32)."""
  config: Mapping[str, Any]  # the model section as plain dicts

  def setup(self):
    c = self.config
    v, dtype, pdtype = c["vit"], jnp.dtype(c["dtype"]), jnp.dtype(c["param_dtype"])
    self.vit = vit_from_config(v, remat=False, dtype=dtype, param_dtype=pdtype)
    self.pool = pool_from_config(c, dtype=dtype, param_dtype=pdtype)

  def __call__(self, images, deterministic: bool = True):
    z = self.vit(images, deterministic=deterministic)
    return z, self.pool(z).astype(jnp.float32)


class VisionEncoder:
  """A loaded artefact: `encoder(images uint8 [N, H, W, 3]) -> (z [N, K, D_v], v [N, D_e] float32)`.

  Attributes for downstream code: `module` (a Flax module; `module.apply({"params": params}, images)`), `params`,
  `config` (the model section), `image_size`, `num_patches`, `width` (D_v), `embed_dim` (D_e), `step`.
  """

  def __init__(self, config: Mapping[str, Any], params, *, step: Optional[int] = None):
    self.config, self.params, self.step = dict(config), params, step
    self.module = VisionTower(self.config)
    v = self.config["vit"]
    self.image_size, self.width, self.embed_dim = v["image_size"], v["width"], self.config["embed_dim"]
    self.num_patches = batch_spec.patches_per_image(v)
    self._apply = jax.jit(lambda p, x: self.module.apply({"params": p}, x))

  def __call__(self, images):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}.")
    return self._apply(self.params, augment.eval_transform(images, self.image_size))


def _open(path: str, mode: str):
  if "://" in path:  # gs:// and friends through tf.io.gfile, imported only then
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.io.gfile.GFile(path, mode)
  return open(path, mode)


def read_artefact(path: str):
  """An exported folder -> (config.json's dict, the params as nested dicts of numpy arrays)."""
  with _open(os.path.join(path, CONFIG_FILE), "r") as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT or meta.get("version") != VERSION:
    raise ValueError(f"{path} is not a {FORMAT} v{VERSION} artefact (config.json says "
                     f"{meta.get('format')!r} v{meta.get('version')!r}).")
  with _open(os.path.join(path, PARAMS_FILE), "rb") as f:
    return meta, serialization.msgpack_restore(f.read())


def load_vision_encoder(path: str, *, dtype: Optional[str] = None) -> VisionEncoder:
  """An exported folder -> VisionEncoder. `dtype` overrides the compute dtype (e.g. "float32" for exact features
  on hardware without fast bfloat16); parameters stay float32."""
  meta, params = read_artefact(path)
  config = dict(meta["model"])
  if dtype is not None:
    config["dtype"] = dtype
  return VisionEncoder(config, {"vit": params["vit"], "pool": params["pool"]}, step=meta.get("step"))


def export(config, workdir: str, output: str, *, step: Optional[int] = None, whole_model: bool = False) -> str:
  """Restores `step` (default: the latest) of the run in `workdir` and writes the artefact to `output`."""
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from lcl_jax import checkpoint, sharding  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh(config.sharding.mesh)
  params, step = checkpoint.restore_params(config, workdir, mesh, step)
  if not whole_model:
    params = {"vit": params["vit"], "pool": params["pool"]}
  # Replicate (an all-gather of fsdp shards) so every host can read every value; only process 0 writes.
  params = jax.device_get(jax.jit(lambda p: p, out_shardings=NamedSharding(mesh, P()))(params))
  model = json.loads(config.model.to_json())
  if jax.process_index() == 0:
    tokenizer = None
    if whole_model and config.data.get("tokenizer"):
      from lcl_jax.evaluators import datasets  # pylint: disable=import-outside-toplevel
      tokenizer = datasets.load_tokenizer(config)
    write_artefact(output, model, params, step=int(step), name=config.get("name", ""), whole_model=whole_model,
                   tokenizer=tokenizer)
  return output


def write_artefact(output: str, model: Mapping[str, Any], params, *, step: Optional[int], name: str,
                   whole_model: bool = False, tokenizer=None) -> str:
  """The artefact folder from a model section (plain dicts) and its params ({"vit", "pool"} or every param), with
  the tokenizer's file (a data_pipelines tokenizer: its `kind`, `file_name` and `serialized_model`) if given."""
  if not whole_model:
    model = {k: model[k] for k in VISION_KEYS if k in model}
  meta = dict(format=FORMAT, version=VERSION, contents="whole_model" if whole_model else "vision_encoder",
              step=step, name=name, model=model)
  if "://" not in output:
    os.makedirs(output, exist_ok=True)
  with _open(os.path.join(output, PARAMS_FILE), "wb") as f:
    f.write(serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
  if tokenizer is not None:
    with _open(os.path.join(output, tokenizer.file_name), "wb") as f:
      f.write(tokenizer.serialized_model)
    meta.update(tokenizer=tokenizer.file_name, tokenizer_kind=tokenizer.kind)
  with _open(os.path.join(output, CONFIG_FILE), "w") as f:  # last: its presence marks a complete artefact
    json.dump(meta, f, indent=2, sort_keys=True)
  return output


def read_run_config(workdir: str, config=None):
  """The run's config: `config` if given (a ConfigDict, e.g. from --config=path[:arg]), else <workdir>/config.json."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  if config is not None:
    return config
  config_path = os.path.join(workdir, CONFIG_FILE)
  try:
    with _open(config_path, "r") as f:
      return ml_collections.ConfigDict(json.load(f))
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{config_path} not found: pass --config=CONFIG[:ARG] (the run's config).") from e


def main(argv):
  from absl import app  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir, output, step, whole_model = _WORKDIR.value, _OUTPUT.value, _STEP.value, _WHOLE_MODEL.value
  config = read_run_config(workdir, _CONFIG.value)
  if _FORMAT.value == "open_clip":
    path = export_open_clip(config, workdir, output, step=step)
    print(f"Exported the authors' open_clip tensors to {path}: {', '.join(sorted(os.listdir(path)))}")
    return
  export(config, workdir, output, step=step, whole_model=whole_model)
  print(f"Exported {'the whole model' if whole_model else 'the vision encoder'} to {output}")


OPEN_CLIP_NAME = "LCL_lcl_jax"  # their factory picks its LCL class for a name containing "lcl"


def export_open_clip(config, workdir: str, output: str, *, step: Optional[int] = None) -> str:
  """The run as the authors' open_clip tensors, written without torch, beside the lcl_jax artefact they are made
  from (<output>/lcl_jax_artefact). A model in their whole layout (configs/lcl_vitb16_laion_openclip.py) gives
  <output>/open_clip_model.pt (torch.save's format: their `open_clip.create_model(name, pretrained=PATH)` loads it
  strictly) and .safetensors, plus <output>/LCL_lcl_jax.json, their model config (`open_clip.add_model_config(
  output)`, then name "LCL_lcl_jax"; a run of their LCL_ViT-B-16_laion shape can use that name instead). Any other
  decoder gives the vision half, <output>/open_clip_vision.safetensors (`visual.*`, `pool_project.*`): load it with
  `model.load_state_dict(safetensors.torch.load_file(PATH), strict=False)`. Returns <output>."""
  from lcl_jax.interop import open_clip, torch_files  # pylint: disable=import-outside-toplevel
  model = json.loads(config.model.to_json())
  whole = open_clip.has_authors_text_tower(model)
  tmp = export(config, workdir, os.path.join(output, "lcl_jax_artefact"), step=step, whole_model=whole)
  meta, params = read_artefact(tmp)
  metadata = {"format": "pt", "source": "lcl_jax", "step": str(meta.get("step"))}
  if jax.process_index() == 0:
    if whole:
      tensors = open_clip.state_dict(params, model)
      torch_files.write_safetensors(os.path.join(output, "open_clip_model.safetensors"), tensors, metadata=metadata)
      torch_files.write_torch_zip(os.path.join(output, "open_clip_model.pt"), tensors)
      with _open(os.path.join(output, f"{OPEN_CLIP_NAME}.json"), "w") as f:
        json.dump(open_clip.open_clip_model_config(model), f, indent=2)
    else:
      torch_files.write_safetensors(os.path.join(output, "open_clip_vision.safetensors"),
                                    open_clip.vision_state_dict(params, model), metadata=metadata)
  return output


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  # Flags exist only when this module runs as the program: importing it (the loader) must not claim flag names.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, path[:arg]; default <workdir>/config.json.",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir (checkpoints/ inside).")
  _OUTPUT = flags.DEFINE_string("output", None, "Folder to write (local or gs://).")
  _STEP = flags.DEFINE_integer("checkpoint_step", None, "Step to export (default: the latest checkpoint).")
  _WHOLE_MODEL = flags.DEFINE_bool("whole_model", False,
                                   "Export every parameter of the LCL model, not only the vision encoder.")
  _FORMAT = flags.DEFINE_enum("format", "lcl_jax", ["lcl_jax", "open_clip"], "lcl_jax: the artefact "
                              "load_vision_encoder reads; open_clip: also the authors' open_clip tensors (the whole "
                              "model in their layout, else the vision half).")
  flags.mark_flags_as_required(["workdir", "output"])
  app.run(main)
