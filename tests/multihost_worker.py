"""One process of the multi-host test: trains the tiny model on this process's chunks of a global batch that is a
pure function of the step, then writes the final params and the loss on step 0's batch (process 0 only).

  python tests/multihost_worker.py OUT_DIR WORKDIR NUM_PROCESSES PROCESS_ID PORT DEVICES_PER_PROCESS
"""
import os
import sys

out_dir, workdir, num_processes, process_id, port, local_devices = sys.argv[1:7]
num_processes, process_id, local_devices = int(num_processes), int(process_id), int(local_devices)
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

if num_processes > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{port}", num_processes, process_id)

import functools  # noqa: E402

import flax.linen as nn  # noqa: E402
import numpy as np  # noqa: E402

from lcl_jax import sharding, state as state_lib, train, train_step as ts  # noqa: E402
from tests import synthetic  # noqa: E402
from tests.test_train import tiny_train_config  # noqa: E402


def global_batch(config, position, num_chunks):
  c = config.data
  batch, _ = synthetic.make_batch(np.random.default_rng(position), num_chunks=num_chunks,
                                  rows_per_chunk=c.rows_per_batch // num_chunks,
                                  images_per_chunk=c.images_per_batch // num_chunks, seq_len=c.seq_len, patches=4,
                                  image_size=16, vocab_size=config.model.decoder.vocab_size)
  return batch


class ChunkSource:
  """This process's contiguous share of the chunks of global batch k (k = position)."""

  def __init__(self, config):
    self.config, self.position = config, 0
    self.num_chunks = jax.device_count()

  def __iter__(self):
    return self

  def __next__(self):
    batch = global_batch(self.config, self.position, self.num_chunks)
    per_process = self.num_chunks // jax.process_count()
    lo, hi = jax.process_index() * per_process, (jax.process_index() + 1) * per_process
    rows = batch["tokens"].shape[0] // self.num_chunks
    slots = batch["images"].shape[0] // self.num_chunks
    local = {k: v[lo * (rows if v.shape[0] == batch["tokens"].shape[0] else slots):
                  hi * (rows if v.shape[0] == batch["tokens"].shape[0] else slots)] for k, v in batch.items()}
    self.position += 1
    return local, {}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, hosts):
    self.position = hosts[jax.process_index()]["position"]


config = tiny_train_config(total_steps=3)
state = train.run(config, workdir, data=ChunkSource(config))

# The loss of the final params on step 0's global batch, computed on the global mesh.
mesh = sharding.make_mesh(config.sharding.mesh)
spec = state_lib.state_spec(config, mesh)
first = train.global_batch(ChunkSource(config).__next__()[0], mesh)
loss_fn = functools.partial(ts.loss_fn, model=spec.model, loss_config=config.loss,
                            special_tokens=dict(config.model.special_tokens), mesh=mesh,
                            num_chunks=sharding.num_data_shards(mesh))
with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
  loss = jax.jit(lambda p, b: loss_fn(p, b, jax.random.key(0))[0])(state.params, first)
params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)  # replicated over data
if jax.process_index() == 0:
  flat = {"/".join(getattr(k, "key", str(k)) for k in path): v
          for path, v in jax.tree_util.tree_leaves_with_path(params)}
  np.savez(os.path.join(out_dir, "params.npz"), loss=float(loss), step=int(state.step), **flat)
