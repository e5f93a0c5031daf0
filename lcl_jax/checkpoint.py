"""Orbax checkpoints: the whole train state plus every host's data-pipeline state, in one step directory.

Resume order (train.py): build the abstract state and its shardings -> `latest_step()` -> if there is one,
`restore(step, abstract_state)` gives the sharded state and the data states of all hosts (each host takes its own,
see data_pipelines for a changed host count) -> else initialise. Saves are asynchronous every `every_steps`; the
last one and a preemption save are synchronous (`wait=True`): an async save started right before exit can be lost.
Orbax writes into a temporary directory and renames it when complete, so a write interrupted halfway leaves the
previous step as the latest usable checkpoint.
"""
from typing import Any, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class Checkpointer:
  def __init__(self, directory: str, *, every_steps: int, keep: int, keep_every: Optional[int] = None,
               async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every, save_interval_steps=1, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self.every_steps = every_steps
    self._manager = ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> Sequence[int]:
    return self._manager.all_steps()

  def due(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(self, step: int, state: Any, data_state: dict, *, wait: bool = False) -> None:
    """Saves `state` (a pytree of jax arrays) and this host's `data_state` (a flat dict of ints).

    Every host calls this; the data states of all hosts are gathered into one JSON item.
    """
    all_data = gather_data_states(data_state)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"hosts": all_data})), force=True)
    if wait:
      self._manager.wait_until_finished()

  def restore(self, step: int, abstract_state: Any):
    """-> (state with the shardings of `abstract_state`, [data state of each host at save time])."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]["hosts"]

  def restore_arrays(self, step: int):
    """-> (state as saved, a nested dict of arrays on the default device, [data state of each host]) without
    an abstract state: for inspection and tests, not for resuming a sharded run."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]["hosts"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def gather_data_states(data_state: dict) -> list:
  """Every host's flat {name: int} data state, in process order (one collective when multi-host)."""
  if jax.process_count() == 1:
    return [dict(data_state)]
  keys = sorted(data_state)
  # Positions can pass 2**31 at scale and jax arrays are 32-bit by default: send high and low words.
  values = np.asarray([int(data_state[k]) for k in keys], np.int64)
  local = np.stack([values >> 32, values & 0xFFFFFFFF]).astype(np.uint32)
  gathered = np.asarray(multihost_utils.process_allgather(local)).reshape(jax.process_count(), 2, -1)
  merged = (gathered[:, 0].astype(np.int64) << 32) | gathered[:, 1].astype(np.int64)
  return [dict(zip(keys, map(int, row))) for row in merged]
