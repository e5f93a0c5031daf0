"""The authors' open_clip LCL state dict <-> lcl_jax parameters, as numpy (torch_files reads and writes the files).

`model_params` maps a whole checkpoint (vision, pool, text tower, LM head, logit scale) onto the layout of
configs/lcl_vitb16_laion_openclip.py; `vision_params` only the vision encoder (`visual.*`, `pool_project.*`), for
a config whose decoder is not theirs. `state_dict` / `vision_state_dict` are the exact inverses.
`python -m lcl_jax.convert --from=open_clip` is the command.

Mapping, torch name -> ours (Linear weights are [out, in] in torch, kernels [in, out] here; a config that scans its
layers holds block_0..block_{n-1} stacked as `blocks` [n, ...]):
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
  text.token_embedding.weight [V, D]            decoder/token_embed/embedding
  text.positional_embedding [280, D]            decoder/pos_embed
  text.transformer.resblocks.i.*                decoder/block_i/* (as the visual blocks)
  text.ln_final, text.text_projection [D, E]    context_norm, context_proj/kernel (the context vector t at <boi>)
  lm_head.0 (LayerNorm), lm_head.1.weight [V, D]  decoder/lm_head_norm, decoder/lm_head/kernel [D, V]
  logit_scale []                                logit_scale
Never in their state dict: visual.proj (the authors set it to None) and text.attn_mask (a buffer). Any other
missing, extra or mis-shaped tensor is an error that lists them all.
"""
import re
from typing import Mapping

import numpy as np

VISION_PREFIXES = ("visual.", "pool_project.")
TEXT_PREFIXES = ("text.", "lm_head.")


class ConversionError(ValueError):
  pass


class _Reader:
  """Takes tensors out of a state dict by name and shape, collecting every problem instead of stopping at one."""

  def __init__(self, state: Mapping[str, np.ndarray]):
    self.state, self.used, self.missing, self.misshaped = state, set(), [], []

  def take(self, name, shape):
    if name not in self.state:
      self.missing.append(name)
      return None
    self.used.add(name)
    x = np.asarray(self.state[name], np.float32)
    if x.shape != tuple(shape):
      self.misshaped.append(f"{name}: {x.shape}, expected {tuple(shape)}")
      return None
    return x

  def ln(self, prefix, width):
    return {"scale": self.take(f"{prefix}.weight", (width,)), "bias": self.take(f"{prefix}.bias", (width,))}

  def linear(self, prefix, d_in, d_out, bias=True):
    w = self.take(f"{prefix}.weight", (d_out, d_in))
    out = {"kernel": None if w is None else w.T}
    if bias:
      out["bias"] = self.take(f"{prefix}.bias", (d_out,))
    return out

  def block(self, prefix, width, heads, mlp_dim):
    """One open_clip ResidualAttentionBlock -> our block (ln_attn, attn, ln_mlp, mlp)."""
    qkv_w = self.take(f"{prefix}.attn.in_proj_weight", (3 * width, width))
    qkv_b = self.take(f"{prefix}.attn.in_proj_bias", (3 * width,))
    attn = {}
    for j, name in enumerate(("query", "key", "value")):
      rows = slice(j * width, (j + 1) * width)
      attn[name] = {"kernel": None if qkv_w is None else _split_heads(qkv_w[rows], heads),
                    "bias": None if qkv_b is None else qkv_b[rows].reshape(heads, -1)}
    out = self.linear(f"{prefix}.attn.out_proj", width, width)
    attn["out"] = {"kernel": _reshape(out["kernel"], (heads, -1, width)), "bias": out["bias"]}
    return {"ln_attn": self.ln(f"{prefix}.ln_1", width), "ln_mlp": self.ln(f"{prefix}.ln_2", width), "attn": attn,
            "mlp": {"fc1": self.linear(f"{prefix}.mlp.c_fc", width, mlp_dim),
                    "fc2": self.linear(f"{prefix}.mlp.c_proj", mlp_dim, width)}}

  def raise_problems(self, what, prefixes, ignored=()):
    """Missing, mis-shaped, and (among names starting with `prefixes`) unused tensors, as one error."""
    extra = sorted(n for n in self.state if n.startswith(prefixes) and n not in self.used and n not in ignored)
    unknown = sorted(n for n in self.state if not n.startswith(VISION_PREFIXES + TEXT_PREFIXES)
                     and not re.match(r"^logit_(scale|bias)$", n))
    problems = ([f"missing: {', '.join(self.missing)}"] if self.missing else []) + \
               ([f"mis-shaped: {'; '.join(self.misshaped)}"] if self.misshaped else []) + \
               ([f"unexpected: {', '.join(extra + unknown)}"] if extra or unknown else [])
    if problems:
      raise ConversionError(f"The checkpoint does not match the config's {what}: " + " | ".join(problems))


def _stack_blocks(tower, depth, scanned: bool):
  """block_0..block_{depth-1} -> `blocks` with a leading layer axis when the config scans its layers (nn.scan)."""
  if not scanned:
    return tower
  blocks = [tower[f"block_{i}"] for i in range(depth)]
  if any(leaf is None for b in blocks for leaf in _leaves(b)):
    return tower  # a missing or mis-shaped tensor, reported with the others
  for i in range(depth):
    del tower[f"block_{i}"]
  tower["blocks"] = _tree_map(lambda *xs: np.stack(xs), *blocks)
  return tower


def _unstack_blocks(tower, depth):
  if "blocks" not in tower:
    return tower
  tower = dict(tower)
  stacked = tower.pop("blocks")
  for i in range(depth):
    tower[f"block_{i}"] = _tree_map(lambda x, i=i: np.asarray(x)[i], stacked)
  return tower


def _leaves(tree):
  return [x for v in tree.values() for x in (_leaves(v) if isinstance(v, dict) else [v])]


def _tree_map(fn, *trees):
  if isinstance(trees[0], dict):
    return {k: _tree_map(fn, *(t[k] for t in trees)) for k in trees[0]}
  return fn(*trees)


def _split_heads(w, heads):
  """torch [out, in] -> [in, H, out / H]."""
  return w.T.reshape(w.shape[1], heads, -1)


def _reshape(x, shape):
  return None if x is None else x.reshape(shape)


def _require(model_config, text: bool) -> None:
  v = model_config["vit"]
  wanted = [(f"vit.{k}", v.get(k), want) for k, want in (
      ("class_token", True), ("ln_pre", True), ("patch_bias", False), ("layerscale_init", None))]
  wanted.append(("pool", model_config.get("pool"), "open_clip"))
  if text:
    d = model_config["decoder"]
    wanted += [(f"decoder.{k}", d.get(k), want) for k, want in (
        ("tie_embeddings", False), ("lm_head_norm", True))]
    wanted.append(("context_proj_bias", model_config.get("context_proj_bias", True), False))
  for key, got, want in wanted:
    if got != want:
      raise ConversionError(f"model.{key}={got!r}: the authors' model needs {want!r} "
                            "(configs/lcl_vitb16_laion_openclip.py sets it).")


def _vision(r: _Reader, model_config) -> dict:
  v = model_config["vit"]
  width, heads, patch = v["width"], v["num_heads"], v["patch_size"]
  conv = r.take("visual.conv1.weight", (width, 3, patch, patch))
  k = (v["image_size"] // patch) ** 2
  vit = {
      "patch_embed": {"kernel": None if conv is None else conv.transpose(2, 3, 1, 0).reshape(-1, width)},
      "cls_token": _reshape(r.take("visual.class_embedding", (width,)), (1, width)),
      "pos_embed": r.take("visual.positional_embedding", (k + 1, width)),
      "ln_pre": r.ln("visual.ln_pre", width),
      "ln_final": r.ln("visual.ln_post", width),
  }
  for i in range(v["depth"]):
    vit[f"block_{i}"] = r.block(f"visual.transformer.resblocks.{i}", width, heads, v["mlp_dim"])
  vit = _stack_blocks(vit, v["depth"], v.get("scan_layers", False))
  d, ph, q = model_config["embed_dim"], model_config["pool_heads"], "pool_project.pooler"
  pool = {"query_token": _reshape(r.take("pool_project.query_token", (1, 1, d)), (1, d)),
          **{f"ln_{s}": r.ln(f"{q}.norm1_{s}", d) for s in "qkv"},
          **{name: {"kernel": _reshape(r.linear(f"{q}.cross_attn.{s}", d, d, bias=False)["kernel"], (d, ph, -1)),
                    "bias": _reshape(r.take(f"{q}.cross_attn.{s}_bias", (d,)), (ph, -1))}
             for s, name in (("q", "query"), ("k", "key"), ("v", "value"))},
          "out": {"kernel": _reshape(r.linear(f"{q}.cross_attn.proj", d, d, bias=False)["kernel"], (ph, -1, d))}}
  return {"vit": vit, "pool": pool}


def _describe(model_config) -> str:
  v, d = model_config["vit"], model_config.get("decoder", {})
  text = f"; text depth {d['depth']}, width {d['width']}, vocabulary {d['vocab_size']}, context {d['max_len']}" \
      if d else ""
  return (f"vision encoder (depth {v['depth']}, width {v['width']}, patch {v['patch_size']}, image "
          f"{v['image_size']}){text}")


def vision_params(state: Mapping[str, np.ndarray], model_config) -> dict:
  """{"vit": ..., "pool": ...} in lcl_jax's layout for the model section `model_config` (open_clip vision
  options on); the text tower's tensors are not read."""
  _require(model_config, text=False)
  r = _Reader(state)
  params = _vision(r, model_config)
  r.raise_problems(_describe({"vit": model_config["vit"]}), VISION_PREFIXES, ignored=("visual.proj",))
  return params


def model_params(state: Mapping[str, np.ndarray], model_config) -> dict:
  """Every parameter of the LCL model for a config with the authors' text tower too."""
  _require(model_config, text=True)
  r = _Reader(state)
  params = _vision(r, model_config)
  d = model_config["decoder"]
  width, vocab = d["width"], d["vocab_size"]
  decoder = {"token_embed": {"embedding": r.take("text.token_embedding.weight", (vocab, width))},
             "pos_embed": r.take("text.positional_embedding", (d["max_len"], width)),
             "lm_head_norm": r.ln("lm_head.0", width),
             "lm_head": {"kernel": r.linear("lm_head.1", width, vocab, bias=False)["kernel"]}}
  for i in range(d["depth"]):
    decoder[f"block_{i}"] = r.block(f"text.transformer.resblocks.{i}", width, d["num_heads"], d["mlp_dim"])
  decoder = _stack_blocks(decoder, d["depth"], d.get("scan_layers", False))
  params.update(decoder=decoder, context_norm=r.ln("text.ln_final", width),
                context_proj={"kernel": r.take("text.text_projection", (width, model_config["embed_dim"]))},
                logit_scale=r.take("logit_scale", ()))
  r.raise_problems(_describe(model_config), VISION_PREFIXES + TEXT_PREFIXES, ignored=("visual.proj",))
  return params


def has_text_tower(state: Mapping[str, np.ndarray]) -> bool:
  return any(n.startswith(TEXT_PREFIXES) for n in state)


# --- the inverse: lcl_jax params -> the authors' tensors -------------------------------------------------------

def _a(x):
  return np.asarray(x, np.float32)


def _ln_state(out, prefix, ln):
  out[f"{prefix}.weight"], out[f"{prefix}.bias"] = _a(ln["scale"]), _a(ln["bias"])


def _linear_state(out, prefix, layer):
  out[f"{prefix}.weight"] = _a(layer["kernel"]).reshape(-1, _a(layer["kernel"]).shape[-1]).T
  if "bias" in layer:
    out[f"{prefix}.bias"] = _a(layer["bias"]).reshape(-1)


def _block_state(out, prefix, block):
  _ln_state(out, f"{prefix}.ln_1", block["ln_attn"])
  _ln_state(out, f"{prefix}.ln_2", block["ln_mlp"])
  attn = block["attn"]
  flat_in = lambda k: _a(k).reshape(k.shape[0], -1).T        # [in, H, h] -> torch [out, in]
  out[f"{prefix}.attn.in_proj_weight"] = np.concatenate([flat_in(attn[n]["kernel"]) for n in ("query", "key", "value")])
  out[f"{prefix}.attn.in_proj_bias"] = np.concatenate([_a(attn[n]["bias"]).reshape(-1)
                                                       for n in ("query", "key", "value")])
  _linear_state(out, f"{prefix}.attn.out_proj", attn["out"])
  _linear_state(out, f"{prefix}.mlp.c_fc", block["mlp"]["fc1"])
  _linear_state(out, f"{prefix}.mlp.c_proj", block["mlp"]["fc2"])


def vision_state_dict(params, model_config) -> dict:
  """The inverse of vision_params: lcl_jax's {"vit", "pool"} -> the authors' `visual.*` and `pool_project.*`
  tensors (float32 numpy), for their open_clip LCL model with the same vision config."""
  _require(model_config, text=False)
  v = model_config["vit"]
  width, patch = v["width"], v["patch_size"]
  vit, pool = _unstack_blocks(params["vit"], v["depth"]), params["pool"]
  out = {
      "visual.conv1.weight": _a(vit["patch_embed"]["kernel"]).reshape(patch, patch, 3, width).transpose(3, 2, 0, 1),
      "visual.class_embedding": _a(vit["cls_token"])[0],
      "visual.positional_embedding": _a(vit["pos_embed"]),
  }
  _ln_state(out, "visual.ln_pre", vit["ln_pre"])
  _ln_state(out, "visual.ln_post", vit["ln_final"])
  for i in range(v["depth"]):
    _block_state(out, f"visual.transformer.resblocks.{i}", vit[f"block_{i}"])
  d, q = model_config["embed_dim"], "pool_project.pooler"
  out["pool_project.query_token"] = _a(pool["query_token"]).reshape(1, 1, d)
  for s in "qkv":
    _ln_state(out, f"{q}.norm1_{s}", pool[f"ln_{s}"])
  for s, name in (("q", "query"), ("k", "key"), ("v", "value")):
    out[f"{q}.cross_attn.{s}.weight"] = _a(pool[name]["kernel"]).reshape(d, d).T
    out[f"{q}.cross_attn.{s}_bias"] = _a(pool[name]["bias"]).reshape(-1)
  out[f"{q}.cross_attn.proj.weight"] = _a(pool["out"]["kernel"]).reshape(d, d).T
  return {k: np.asarray(x, order="C") for k, x in out.items()}  # (ascontiguousarray makes a 0-d array [1])


def state_dict(params, model_config) -> dict:
  """The inverse of model_params: the authors' whole state dict, which their
  `open_clip.create_model(name, pretrained=PATH)` loads strictly."""
  _require(model_config, text=True)
  out = vision_state_dict(params, model_config)
  dec = _unstack_blocks(params["decoder"], model_config["decoder"]["depth"])
  out["text.token_embedding.weight"] = _a(dec["token_embed"]["embedding"])
  out["text.positional_embedding"] = _a(dec["pos_embed"])
  for i in range(model_config["decoder"]["depth"]):
    _block_state(out, f"text.transformer.resblocks.{i}", dec[f"block_{i}"])
  _ln_state(out, "text.ln_final", params["context_norm"])
  out["text.text_projection"] = _a(params["context_proj"]["kernel"])
  _ln_state(out, "lm_head.0", dec["lm_head_norm"])
  _linear_state(out, "lm_head.1", dec["lm_head"])
  out["logit_scale"] = _a(params["logit_scale"])
  return {k: np.asarray(x, order="C") for k, x in out.items()}  # (ascontiguousarray makes a 0-d array [1])


_SPECIAL_NAMES = {"bos": "<start_of_text>", "eos": "<end_of_text>", "img": "<img_placehold>",
                  "boi": "<start_of_img>", "eoi": "<end_of_img>"}


def open_clip_model_config(model_config) -> dict:
  """Their model-config JSON for a model in this layout (their `open_clip.add_model_config(FOLDER)` registers it;
  a name starting with "LCL" selects their LCL class)."""
  _require(model_config, text=True)
  v, d, st = model_config["vit"], model_config["decoder"], model_config["special_tokens"]
  activations = {v["activation"], d["activation"]}
  if activations - {"gelu", "quick_gelu"} or len(activations) > 1:
    raise ConversionError(f"model.vit.activation={v['activation']!r}, model.decoder.activation="
                          f"{d['activation']!r}: their towers share one activation, 'gelu' or 'quick_gelu'.")
  if st["pad"] != 0:
    raise ConversionError(f"model.special_tokens.pad={st['pad']}: their LCL pads with id 0.")
  return {
      "embed_dim": model_config["embed_dim"],
      "quick_gelu": activations == {"quick_gelu"},
      "vision_cfg": {"image_size": v["image_size"], "layers": v["depth"], "width": v["width"],
                     "patch_size": v["patch_size"], "head_width": v["width"] // v["num_heads"],
                     "mlp_ratio": v["mlp_dim"] / v["width"]},
      "text_cfg": {"context_length": d["max_len"], "vocab_size": d["vocab_size"], "width": d["width"],
                   "heads": d["num_heads"], "layers": d["depth"], "mlp_ratio": d["mlp_dim"] / d["width"],
                   "tokenizer_kwargs": {"additional_special_tokens": [_SPECIAL_NAMES[k] for k in ("img", "boi", "eoi")]}},
      "pool_project_cfg": {"pool_proj_type": "attn", "input_dim": v["width"], "output_dim": model_config["embed_dim"],
                           "attn_num_heads": model_config["pool_heads"]},
      "special_token_ids": {name: st[key] for key, name in _SPECIAL_NAMES.items()},
      "custom_text": True,
  }


def has_authors_text_tower(model_config) -> bool:
  """Whether the model section is their whole layout (state_dict maps every parameter), not only their vision."""
  try:
    _require(model_config, text=True)
  except ConversionError:
    return False
  return True
