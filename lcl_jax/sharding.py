"""The device mesh (built once from the config) and the logical-axis rules that map model axes onto it."""
import math
import time
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
from absl import logging
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
from orbax.checkpoint import multihost as ocp_multihost

from lcl_jax import axes
from lcl_jax.config_checks import ConfigError


def mesh_shape(requested: Mapping[str, int], num_devices: int) -> dict:
  """Fills the one -1 in {data, fsdp, tensor} with the remaining devices; checks the product."""
  unknown = set(requested) - set(axes.MESH_AXES)
  if unknown:
    raise ConfigError(f"config.sharding.mesh has unknown axes {sorted(unknown)}; use {axes.MESH_AXES}.")
  shape = {a: int(requested.get(a, 1)) for a in axes.MESH_AXES}
  free = [a for a, s in shape.items() if s == -1]
  if len(free) > 1:
    raise ConfigError(f"config.sharding.mesh may have at most one -1, got {shape}.")
  known = math.prod(s for s in shape.values() if s != -1)
  if free:
    if num_devices % known:
      raise ConfigError(f"config.sharding.mesh {shape}: {num_devices} devices do not divide by {known}.")
    shape[free[0]] = num_devices // known
  if math.prod(shape.values()) != num_devices:
    raise ConfigError(f"config.sharding.mesh {shape} needs {math.prod(shape.values())} devices, "
                      f"there are {num_devices}; set one axis to -1 or fix the sizes.")
  return shape


def make_mesh(requested: Mapping[str, int], devices: Optional[Sequence] = None) -> Mesh:
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(requested, len(devices))
  sizes = tuple(shape[a] for a in axes.MESH_AXES)
  # Auto axes: GSPMD propagates shardings from the logical constraints (jax's default is Explicit).
  types = (AxisType.Auto,) * len(sizes)
  if devices == jax.devices():
    return jax.make_mesh(sizes, axes.MESH_AXES, axis_types=types, devices=devices)
  return Mesh(np.asarray(devices).reshape(sizes), axes.MESH_AXES, axis_types=types)


def num_data_shards(mesh: Mesh) -> int:
  """C in the batch contract: the number of data-parallel shards (data x fsdp)."""
  return math.prod(mesh.shape[a] for a in axes.DATA_AXES)


def rules(config) -> tuple:
  return tuple((name, tuple(m) if isinstance(m, (list, tuple)) else m) for name, m in config.sharding.rules)


def logical_shardings(abstract_tree, mesh: Mesh, logical_rules):
  """NamedShardings for a tree of (possibly boxed) abstract values annotated with logical axes."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, logical_rules)


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch or image) dimension split over the data axes, the rest replicated."""
  return NamedSharding(mesh, P(axes.DATA_AXES))


# The batch contract's arrays by their logical axes: rows of tokens, image slots; nothing else is split.
BATCH_AXES = dict(tokens=(axes.ACT_BATCH, axes.ACT_SEQ), segment_ids=(axes.ACT_BATCH, axes.ACT_SEQ),
                  positions=(axes.ACT_BATCH, axes.ACT_SEQ), images=(axes.ACT_IMAGES, None, None, None),
                  image_valid=(axes.ACT_IMAGES,))


def batch_shardings(mesh: Mesh, logical_rules) -> dict[str, NamedSharding]:
  """{batch key: NamedSharding} from the config's logical rules (act_batch, act_images, ...), the one place the
  training batch's shardings come from. The pipeline lays a batch out as C = data x fsdp chunks in device order
  and the contrastive loss gathers over those axes, so rows and image slots must map to exactly them."""
  shardings = nn.logical_to_mesh_sharding({k: P(*names) for k, names in BATCH_AXES.items()}, mesh, logical_rules)
  for key, s in shardings.items():
    lead = s.spec[0] if len(s.spec) else None
    lead = (lead,) if isinstance(lead, str) else tuple(lead or ())
    if lead != axes.DATA_AXES or any(a is not None for a in s.spec[1:]):
      raise ConfigError(f"config.sharding.rules put the batch's {key} on {s.spec}: rows and image slots "
                        f"({axes.ACT_BATCH}, {axes.ACT_IMAGES}) must map to {axes.DATA_AXES}, the data shards the "
                        "pipeline's chunks are laid out for, and nothing else of the batch may be split.")
  return shardings


def all_hosts_ok(ok: bool) -> bool:
  """True if every process says ok: one collective of the same shape on every host (none on one host)."""
  if jax.process_count() == 1:
    return bool(ok)
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def wait_for_every_host(name: str, timeout_s: int = 1800) -> None:
  """Blocks until every process reaches the barrier `name` (unique per run), over the coordination service: no
  device collective, so a host may arrive minutes late. On CPU a device collective (gloo) gives a late peer only
  30 s, and processes other than 0 never hit the persistent compilation cache (their cache key differs, and JAX
  writes only process 0's), so without this a host still compiling fails the others' first step."""
  if jax.process_count() == 1:
    return
  start = time.perf_counter()
  ocp_multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)
  logging.info("Waited %.1f s at barrier %s for the other hosts.", time.perf_counter() - start, name)
