"""The train state's shape and sharding, derived once from the config and mesh (train, evaluate, plan share it)."""
import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax

from data_pipelines import batch_spec
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
  tiny = batch_spec.zeros(batch_spec.smallest(config.model))
  init_fn = functools.partial(ts.init_state, model, tx, tiny, config.seed, 1)
  boxed = jax.eval_shape(init_fn)
  shardings = sharding.logical_shardings(boxed, mesh, sharding.rules(config))
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed),
                          shardings)
  data = sharding.data_sharding(mesh)
  batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=data)
           for name, (shape, dtype) in batch_spec.batch_spec(config).items()}
  return StateSpec(model=model, tx=tx, schedule=optim.learning_rate_schedule(config.optim), batch=batch,
                   init_fn=init_fn, shardings=shardings, abstract=abstract, boxed=boxed)


def abstract_train_state(config, mesh):
  """(abstract TrainState with shardings, TrainState of NamedShardings)."""
  spec = state_spec(config, mesh)
  return spec.abstract, spec.shardings
