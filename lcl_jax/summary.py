"""Parameter table of a model config: path, shape, logical axes, count, and totals per tower (no memory used)."""
import collections
import math

import flax.linen as nn
import jax

from data_pipelines import batch_spec
from lcl_jax import models

# Top-level module -> tower, for the totals.
TOWERS = {"vit": "vision (ViT)", "pool": "attention pooling", "decoder": "decoder",
          "image_proj": "image -> decoder projection", "context_norm": "context head",
          "context_proj": "context head", "logit_scale": "logit scale"}


def parameter_table(model_config):
  """[(path, shape, logical axes, count)] and {tower: count}."""
  params = models.abstract_params(model_config, batch_spec.smallest(model_config))
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
