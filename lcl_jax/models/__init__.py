"""Flax Linen models of lcl_jax. Never imports data, optax, orbax or tensorflow."""
import jax

from lcl_jax.models.decoder import Decoder
from lcl_jax.models.lcl import LCL
from lcl_jax.models.vit import AttentionPool, ViT


def abstract_params(model_config, spec):
  """The boxed parameter tree as ShapeDtypeStructs (no memory allocated). `spec`: {field: (shape, dtype)} of any
  batch of the contract, from the caller (data_pipelines.batch_spec; parameter shapes do not depend on it)."""
  model = LCL(model_config)
  batch = {name: jax.ShapeDtypeStruct(shape, dtype) for name, (shape, dtype) in spec.items()}
  return jax.eval_shape(lambda b: model.init(jax.random.key(0), b), batch)["params"]


__all__ = ["LCL", "ViT", "AttentionPool", "Decoder", "abstract_params"]
