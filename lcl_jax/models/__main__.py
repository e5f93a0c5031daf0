"""Prints every parameter of a config's model: path, shape, logical axes, count, and totals per tower.

  python -m lcl_jax.models --config=configs/vitl14_laion_mmc4.py
Uses jax.eval_shape: no parameter memory is allocated.
"""
import collections
import math

import flax.linen as nn
import jax
from absl import app
from ml_collections import config_flags

from lcl_jax import models

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).", lock_config=True)

# Top-level module -> tower, for the totals.
TOWERS = {"vit": "vision (ViT)", "pool": "attention pooling", "decoder": "decoder",
          "image_proj": "image -> decoder projection", "context_norm": "context head",
          "context_proj": "context head", "logit_scale": "logit scale"}


def parameter_table(model_config):
  """[(path, shape, logical axes, count)] and {tower: count}."""
  params = models.abstract_params(model_config)
  rows, towers = [], collections.Counter()
  flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  for path, leaf in flat:
    names = leaf.names if isinstance(leaf, nn.Partitioned) else None
    value = nn.unbox(leaf)
    keys = [getattr(k, "key", str(k)) for k in path]
    count = math.prod(value.shape)
    rows.append(("/".join(keys), tuple(value.shape), names, count))
    towers[TOWERS.get(keys[0], keys[0])] += count
  return rows, dict(towers)


def main(argv):
  del argv
  config = _CONFIG.value
  rows, towers = parameter_table(config.model)
  width = max(len(r[0]) for r in rows)
  for path, shape, names, count in rows:
    print(f"{path:<{width}}  {str(shape):<22} {str(names):<36} {count:>12,}")
  print()
  for tower, count in towers.items():
    print(f"{tower:<32} {count:>14,}  ({count / 1e6:.2f}M)")
  total = sum(towers.values())
  print(f"{'total':<32} {total:>14,}  ({total / 1e6:.2f}M)")
  print(f"decoder vocabulary: {config.model.decoder.vocab_size} ids "
        f"(tied LM head: {config.model.decoder.tie_embeddings})")


if __name__ == "__main__":
  app.run(main)
