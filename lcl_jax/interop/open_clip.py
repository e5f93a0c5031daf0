"""The authors' open_clip LCL checkpoint -> lcl_jax parameters, no torch needed (torch_files reads the file).

  python -m lcl_jax.interop.open_clip --checkpoint=PATH.pt|.safetensors --output=DIR [--config=CFG[:ARG]]

writes the vision encoder (the `visual.*` and `pool_project.*` tensors) as an lcl_jax.export artefact, which
`lcl_jax.load_vision_encoder(DIR)` reads. The model section comes from the config, by default
configs/lcl_vitb16_laion_openclip.py (the authors' LCL_ViT-B-16_laion: their open_clip ViT and attentive pool).

Mapping, torch name -> ours (unscanned blocks; Linear weights are [out, in] in torch, kernels [in, out] here):
  visual.conv1.weight [D, 3, p, p]              vit/patch_embed/kernel [(p p 3), D]  (patches flattened row, col, rgb)
  visual.class_embedding [D]                    vit/cls_token [1, D]
  visual.positional_embedding [K + 1, D]        vit/pos_embed
  visual.ln_pre / ln_post                       vit/ln_pre / vit/ln_final
  visual.transformer.resblocks.i.ln_1 / ln_2    vit/block_i/ln_attn / ln_mlp
  ...attn.in_proj_weight / in_proj_bias [3D, D] vit/block_i/attn/{query,key,value}/kernel [D, H, D/H], bias [H, D/H]
  ...attn.out_proj                              vit/block_i/attn/out/kernel [H, D/H, D], bias
  ...mlp.c_fc / mlp.c_proj                      vit/block_i/mlp/fc1 / fc2
  pool_project.query_token [1, 1, D]            pool/query_token [1, D]
  pool_project.pooler.norm1_{q,k,v}             pool/ln_{q,k,v}
  pool_project.pooler.cross_attn.{q,k,v}.weight, {q,k,v}_bias   pool/{query,key,value}/kernel, bias
  pool_project.pooler.cross_attn.proj.weight    pool/out/kernel (no bias)
Unused: visual.proj (the authors set it to None), and the text tower (text.*, lm_head.*, logit_scale) for a vision
encoder. Any other missing, extra or mis-shaped tensor is an error that lists them all.
"""
import json
import re
from typing import Mapping

import numpy as np


class ConversionError(ValueError):
  pass


def _ln(prefix):
  return {"scale": f"{prefix}.weight", "bias": f"{prefix}.bias"}


def _heads(w, heads):
  """torch [out, in] -> [in, H, out / H]."""
  return w.T.reshape(w.shape[1], heads, -1)


def _require_open_clip_layout(model_config) -> None:
  v = model_config["vit"]
  for key, want in (("class_token", True), ("ln_pre", True), ("patch_bias", False), ("layerscale_init", None),
                    ("scan_layers", False)):
    if v.get(key) != want:
      raise ConversionError(f"model.vit.{key}={v.get(key)!r}: the authors' ViT needs {want!r} "
                            "(configs/lcl_vitb16_laion_openclip.py sets it).")
  if model_config.get("pool") != "open_clip":
    raise ConversionError("model.pool must be 'open_clip' to map the authors' pool_project weights.")


def vision_params(state: Mapping[str, np.ndarray], model_config) -> dict:
  """{"vit": ..., "pool": ...} in lcl_jax's layout for the model section `model_config` (open_clip options on)."""
  _require_open_clip_layout(model_config)
  v = model_config["vit"]
  width, heads, patch = v["width"], v["num_heads"], v["patch_size"]
  used = set()

  def take(name, shape=None):
    if name not in state:
      missing.append(name)
      return None
    used.add(name)
    x = np.asarray(state[name], np.float32)
    if shape is not None and x.shape != tuple(shape):
      misshaped.append(f"{name}: {x.shape}, expected {tuple(shape)}")
      return None
    return x

  missing, misshaped = [], []
  conv = take("visual.conv1.weight", (width, 3, patch, patch))
  k = (v["image_size"] // patch) ** 2
  vit = {
      "patch_embed": {"kernel": None if conv is None else conv.transpose(2, 3, 1, 0).reshape(-1, width)},
      "cls_token": _reshape(take("visual.class_embedding", (width,)), (1, width)),
      "pos_embed": take("visual.positional_embedding", (k + 1, width)),
      "ln_pre": {n: take(t, (width,)) for n, t in _ln("visual.ln_pre").items()},
      "ln_final": {n: take(t, (width,)) for n, t in _ln("visual.ln_post").items()},
  }
  for i in range(v["depth"]):
    p = f"visual.transformer.resblocks.{i}"
    qkv_w = take(f"{p}.attn.in_proj_weight", (3 * width, width))
    qkv_b = take(f"{p}.attn.in_proj_bias", (3 * width,))
    attn = {}
    for j, name in enumerate(("query", "key", "value")):
      attn[name] = {"kernel": None if qkv_w is None else _heads(qkv_w[j * width:(j + 1) * width], heads),
                    "bias": None if qkv_b is None else qkv_b[j * width:(j + 1) * width].reshape(heads, -1)}
    out_w = take(f"{p}.attn.out_proj.weight", (width, width))
    attn["out"] = {"kernel": None if out_w is None else out_w.T.reshape(heads, -1, width),
                   "bias": take(f"{p}.attn.out_proj.bias", (width,))}
    mlp_dim = v["mlp_dim"]
    vit[f"block_{i}"] = {
        "ln_attn": {n: take(t, (width,)) for n, t in _ln(f"{p}.ln_1").items()},
        "ln_mlp": {n: take(t, (width,)) for n, t in _ln(f"{p}.ln_2").items()},
        "attn": attn,
        "mlp": {"fc1": {"kernel": _t(take(f"{p}.mlp.c_fc.weight", (mlp_dim, width))),
                        "bias": take(f"{p}.mlp.c_fc.bias", (mlp_dim,))},
                "fc2": {"kernel": _t(take(f"{p}.mlp.c_proj.weight", (width, mlp_dim))),
                        "bias": take(f"{p}.mlp.c_proj.bias", (width,))}},
    }
  d, ph = model_config["embed_dim"], model_config["pool_heads"]
  q = "pool_project.pooler"
  pool = {"query_token": _reshape(take("pool_project.query_token", (1, 1, d)), (1, d)),
          **{f"ln_{s}": {n: take(t, (d,)) for n, t in _ln(f"{q}.norm1_{s}").items()} for s in "qkv"},
          **{name: {"kernel": _heads_or_none(take(f"{q}.cross_attn.{s}.weight", (d, d)), ph),
                    "bias": _reshape(take(f"{q}.cross_attn.{s}_bias", (d,)), (ph, -1))}
             for s, name in (("q", "query"), ("k", "key"), ("v", "value"))},
          "out": {"kernel": _reshape(_t(take(f"{q}.cross_attn.proj.weight", (d, d))), (ph, -1, d))}}

  ignored = re.compile(r"^(text\.|lm_head\.|logit_scale$|logit_bias$|visual\.proj$)")
  extra = sorted(n for n in state if n not in used and not ignored.match(n) and
                 (n.startswith("visual.") or n.startswith("pool_project.")))
  unknown = sorted(n for n in state if not (n.startswith(("visual.", "pool_project.")) or ignored.match(n)))
  problems = ([f"missing: {', '.join(missing)}"] if missing else []) + \
             ([f"mis-shaped: {'; '.join(misshaped)}"] if misshaped else []) + \
             ([f"unexpected: {', '.join(extra + unknown)}"] if extra or unknown else [])
  if problems:
    raise ConversionError("The checkpoint does not match the config's vision encoder (depth "
                          f"{v['depth']}, width {width}, patch {patch}, image {v['image_size']}): " + " | ".join(problems))
  return {"vit": vit, "pool": pool}


def vision_state_dict(params, model_config) -> dict:
  """The inverse of vision_params: lcl_jax's {"vit", "pool"} -> the authors' `visual.*` and `pool_project.*`
  tensors (float32 numpy), for their open_clip LCL model with the same vision config."""
  _require_open_clip_layout(model_config)
  v = model_config["vit"]
  width, patch = v["width"], v["patch_size"]
  a = lambda x: np.asarray(x, np.float32)
  vit, pool = params["vit"], params["pool"]
  out = {
      "visual.conv1.weight": a(vit["patch_embed"]["kernel"]).reshape(patch, patch, 3, width).transpose(3, 2, 0, 1),
      "visual.class_embedding": a(vit["cls_token"])[0],
      "visual.positional_embedding": a(vit["pos_embed"]),
  }
  for ours, theirs in (("ln_pre", "visual.ln_pre"), ("ln_final", "visual.ln_post")):
    out[f"{theirs}.weight"], out[f"{theirs}.bias"] = a(vit[ours]["scale"]), a(vit[ours]["bias"])
  flat_in = lambda k: a(k).reshape(k.shape[0], -1).T        # [in, H, h] -> torch [out, in]
  for i in range(v["depth"]):
    b, p = vit[f"block_{i}"], f"visual.transformer.resblocks.{i}"
    for ours, theirs in (("ln_attn", "ln_1"), ("ln_mlp", "ln_2")):
      out[f"{p}.{theirs}.weight"], out[f"{p}.{theirs}.bias"] = a(b[ours]["scale"]), a(b[ours]["bias"])
    attn = b["attn"]
    out[f"{p}.attn.in_proj_weight"] = np.concatenate([flat_in(attn[n]["kernel"]) for n in ("query", "key", "value")])
    out[f"{p}.attn.in_proj_bias"] = np.concatenate([a(attn[n]["bias"]).reshape(-1) for n in ("query", "key", "value")])
    out[f"{p}.attn.out_proj.weight"] = a(attn["out"]["kernel"]).reshape(width, width).T
    out[f"{p}.attn.out_proj.bias"] = a(attn["out"]["bias"])
    for ours, theirs in (("fc1", "c_fc"), ("fc2", "c_proj")):
      out[f"{p}.mlp.{theirs}.weight"] = a(b["mlp"][ours]["kernel"]).T
      out[f"{p}.mlp.{theirs}.bias"] = a(b["mlp"][ours]["bias"])
  d, q = model_config["embed_dim"], "pool_project.pooler"
  out["pool_project.query_token"] = a(pool["query_token"]).reshape(1, 1, d)
  for s in "qkv":
    out[f"{q}.norm1_{s}.weight"], out[f"{q}.norm1_{s}.bias"] = a(pool[f"ln_{s}"]["scale"]), a(pool[f"ln_{s}"]["bias"])
  for s, name in (("q", "query"), ("k", "key"), ("v", "value")):
    out[f"{q}.cross_attn.{s}.weight"] = flat_in(pool[name]["kernel"])
    out[f"{q}.cross_attn.{s}_bias"] = a(pool[name]["bias"]).reshape(-1)
  out[f"{q}.cross_attn.proj.weight"] = a(pool["out"]["kernel"]).reshape(d, d).T
  return {k: np.ascontiguousarray(x) for k, x in out.items()}


def _t(x):
  return None if x is None else x.T


def _reshape(x, shape):
  return None if x is None else x.reshape(shape)


def _heads_or_none(w, heads):
  return None if w is None else _heads(w, heads)


def main(argv):
  import sys  # pylint: disable=import-outside-toplevel
  from absl import app  # pylint: disable=import-outside-toplevel
  from lcl_jax import export  # pylint: disable=import-outside-toplevel
  from lcl_jax.interop import torch_files  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  model = json.loads(config.model.to_json())
  try:
    params = vision_params(torch_files.read_state_dict(_CHECKPOINT.value), model)
  except (ConversionError, torch_files.CheckpointFormatError, OSError) as e:
    print(f"lcl_jax: {e}", file=sys.stderr)
    sys.exit(2)
  export.write_artefact(_OUTPUT.value, model, params, step=None, name=f"{config.get('name', '')} (imported)")
  print(f"Wrote {_OUTPUT.value}: lcl_jax.load_vision_encoder({_OUTPUT.value!r}).")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/lcl_vitb16_laion_openclip.py",
                                            "The config whose model section the checkpoint matches.")
  _CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The authors' .pt / .pth / .bin / .safetensors file.")
  _OUTPUT = flags.DEFINE_string("output", None, "Folder for the lcl_jax vision-encoder artefact.")
  flags.mark_flags_as_required(["checkpoint", "output"])
  app.run(main)
