"""A model config's parameters through clu's parameter overview (name, shape, dtype, size, and with a mesh the mesh
axes of each dimension), and totals per tower (no memory used)."""
import flax.linen as nn
import jax
from clu import parameter_overview

from data_pipelines import batch_spec
from lcl_jax import models, sharding

# Top-level module -> tower, for the totals.
TOWERS = {"vit": "vision (ViT)", "pool": "attention pooling", "decoder": "decoder",
          "image_proj": "image -> decoder projection", "context_norm": "context head",
          "context_proj": "context head", "logit_scale": "logit scale"}


def tower_counts(params) -> dict:
  """{tower: parameter count} of a (plain or abstract) parameter tree, counted by clu."""
  towers = {}
  for key, value in params.items():
    tower = TOWERS.get(key, key)
    towers[tower] = towers.get(tower, 0) + int(parameter_overview.count_parameters({key: value}))
  return towers


def parameter_table(model_config, mesh=None, logical_rules=()) -> tuple[str, dict]:
  """(clu's overview table, {tower: count}). With a mesh, each parameter carries its sharding under the logical
  rules and the table shows its mesh axes per dimension."""
  boxed = models.abstract_params(model_config, batch_spec.smallest(model_config))
  params = nn.unbox(boxed)
  if mesh is not None:
    params = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), params,
                          sharding.logical_shardings(boxed, mesh, logical_rules))
  table = parameter_overview.get_parameter_overview(params, include_stats="sharding" if mesh is not None else False)
  return table, tower_counts(params)
