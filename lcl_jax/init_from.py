"""Starting a run from an exported artefact (`config.init_from`): its parameters replace the fresh ones they name."""
import json

import jax
import numpy as np

from lcl_jax import config_checks, export


# Keys of an artefact's model section that change what its parameters compute (not only their shapes).
_ARCHITECTURE = {"vit": ("class_token", "ln_pre", "patch_bias", "activation", "patch_size", "image_size",
                         "num_heads", "layerscale_init"),
                 "": ("pool", "pool_heads", "embed_dim")}


def _architecture_differences(artefact_model, model) -> list:
  out = []
  for section, keys in _ARCHITECTURE.items():
    a = artefact_model.get(section, {}) if section else artefact_model
    b = model.get(section, {}) if section else model
    for key in keys:
      if key in a and a[key] != b.get(key):
        out.append(f"model.{section + '.' if section else ''}{key}: artefact {a[key]!r}, config {b.get(key)!r}")
  return out


def load_into(params, shardings, path: str, model_config=None):
  """(params with the artefact's subtrees (vit and pool, or every one) swapped in, the names swapped) for a freshly
  initialised state. Every swapped leaf must have the shape it replaces, and the artefact's architecture options
  must be the config's (`model_config`, the model section); the optimizer state stays fresh."""
  try:
    meta, loaded = export.read_artefact(path)
  except (OSError, ValueError) as e:
    raise config_checks.ConfigError(f"config.init_from={path!r} cannot be read ({type(e).__name__}: {e}); point it "
                                    "at a folder written by lcl_jax.export or lcl_jax.convert.") from None
  problems = _architecture_differences(meta.get("model", {}), json.loads(model_config.to_json())) \
      if model_config is not None else []
  for key, tree in loaded.items():
    if key not in params:
      problems.append(f"{key}: not in this model")
      continue
    want = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params[key])}
    got = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}
    for name in sorted(set(want) | set(got)):
      if want.get(name) != got.get(name):
        problems.append(f"{key}{name}: artefact {got.get(name)}, model {want.get(name)}")
  if problems:
    raise config_checks.ConfigError(f"config.init_from={path!r} does not fit this config's model: "
                                    + "; ".join(problems[:20]) + (" ..." if len(problems) > 20 else ""))
  place = lambda x, old, sharding: jax.device_put(np.asarray(x).astype(old.dtype), sharding)
  swapped = {key: jax.tree.map(place, loaded[key], params[key], shardings[key]) for key in loaded}
  return dict(params, **swapped), sorted(loaded)
