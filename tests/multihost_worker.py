"""The one-process reference of tests/test_multihost.py: one process with the devices of all hosts of a P-process run
trains on the same global batches. They come from P real pipelines, one per emulated host, whose host batches are
concatenated in process order, which is how make_array_from_process_local_data lays them out over P processes.

  python tests/multihost_worker.py WORKDIR HOSTS DEVICES CONFIG_OVERRIDES_JSON
"""
import json
import os
import sys

workdir, hosts, devices, overrides = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests import xla_flags  # noqa: E402

os.environ["XLA_FLAGS"] = xla_flags.with_devices(devices)
os.environ["JAX_PLATFORMS"] = "cpu"

import numpy as np  # noqa: E402

from configs import vitb16_mmc4  # noqa: E402
from data_pipelines import pipeline  # noqa: E402
from lcl_jax import sharding, train  # noqa: E402


class EmulatedHosts:
  """The global batch of a `hosts`-process run, in one process."""

  def __init__(self, config, num_chunks, hosts):
    self.pipelines = [pipeline.Pipeline(config, num_chunks=num_chunks, process_index=h, process_count=hosts)
                      for h in range(hosts)]

  def __iter__(self):
    return self

  def __next__(self):
    parts = [next(p) for p in self.pipelines]
    return {k: np.concatenate([batch[k] for batch, _ in parts]) for k in parts[0][0]}, parts[0][1]

  def get_state(self):  # saved with the final checkpoint; the reference never resumes
    return {f"host{h}/{k}": v for h, p in enumerate(self.pipelines) for k, v in p.get_state().items()}

  def set_state(self, saved):
    raise AssertionError("the reference run starts from scratch")

  def close(self):
    for p in self.pipelines:
      p.close()


config = vitb16_mmc4.get_config("runlocal")
config.update_from_flattened_dict(overrides)
mesh = sharding.make_mesh(config.sharding.mesh)
train.run(config, workdir, data=EmulatedHosts(config, sharding.num_data_shards(mesh) * config.optim.grad_accum_steps,
                                                      hosts))
