"""The train state's shape and sharding, derived once from the config and mesh (train, evaluate, plan share it)."""
import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lcl_jax import models, optim, sharding, train_step as ts


@dataclasses.dataclass
class StateSpec:
  model: models.LCL
  tx: Any                     # optax transformation
  schedule: Callable          # step -> learning rate
  batch: dict                 # ShapeDtypeStructs of one global batch, sharded over the data axes
  init_fn: Callable           # () -> boxed TrainState (jit it with out_shardings=shardings)
  shardings: Any              # TrainState of NamedShardings
  abstract: Any               # TrainState of ShapeDtypeStructs carrying those shardings
  boxed: Any                  # TrainState of abstract values with their logical axis names


def state_spec(config, mesh) -> StateSpec:
  """Everything about the state except its values: no device memory is touched."""
  model = models.LCL(config.model)
  tx = optim.make_optimizer(config.optim)
  # Parameter shapes do not depend on the batch: initialise from a one-row, one-image batch.
  tiny = models.dummy_batch(config.model, rows=1, images=1, seq_len=config.data.seq_len)
  init_fn = functools.partial(ts.init_state, model, tx, tiny, config.seed, 1)
  boxed = jax.eval_shape(init_fn)
  shardings = sharding.logical_shardings(boxed, mesh, sharding.rules(config))
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed),
                          shardings)
  data = sharding.data_sharding(mesh)
  size = config.model.vit.image_size
  rows, images, length = config.data.rows_per_batch, config.data.images_per_batch, config.data.seq_len
  batch = dict(tokens=jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=data),
               segment_ids=jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=data),
               positions=jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=data),
               images=jax.ShapeDtypeStruct((images, size, size, 3), jnp.uint8, sharding=data),
               image_valid=jax.ShapeDtypeStruct((images,), jnp.bool_, sharding=data))
  return StateSpec(model=model, tx=tx, schedule=optim.learning_rate_schedule(config.optim), batch=batch,
                   init_fn=init_fn, shardings=shardings, abstract=abstract, boxed=boxed)


def abstract_train_state(config, mesh):
  """(abstract TrainState with shardings, TrainState of NamedShardings)."""
  spec = state_spec(config, mesh)
  return spec.abstract, spec.shardings
