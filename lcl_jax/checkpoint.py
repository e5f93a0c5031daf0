"""Orbax checkpoints: the whole train state plus every host's data-pipeline state, in one step directory.

Resume order (train.py): build the abstract state and its shardings -> `restore_latest(abstract_state)` gives the
newest step that restores (sharded state, data states of all hosts; each host takes its own, see data_pipelines for a
changed host count), moving aside any newer step that does not -> else initialise. Saves are asynchronous every
`every_steps`; the last one and a preemption save are synchronous (`wait=True`): an async save started right before
exit can be lost. Orbax writes into a temporary directory and renames it when complete, so a write interrupted
halfway leaves the previous step as the latest usable checkpoint.

Every failure a user can meet here (a save that cannot be written, no step that restores) is a CheckpointError whose
text is one line: the step, the path, the cause and what to do.
"""
import json
import os
import time
from typing import Any, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from lcl_jax import sharding, state as state_lib

# Suffix of a step directory that failed to restore and was moved aside (orbax lists only integer names as steps).
CORRUPT_SUFFIX = ".corrupt-"


class CheckpointError(RuntimeError):
  """An operational checkpoint failure; str() is the one line for the user."""


class Checkpointer:
  def __init__(self, directory: str, *, every_steps: int, keep: int, keep_every: Optional[int] = None,
               async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every, save_interval_steps=1, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self.directory = epath.Path(directory)
    self.every_steps = every_steps
    self._manager = ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))
    # Only the training loop may advance JAX's preemption sync counter: orbax also asks it (for its own stats) from
    # its save and finalize threads, which can step past the agreed step on one host and hang the others.
    self._manager.reached_preemption = lambda step: False
    self._in_flight: Optional[int] = None  # step of the async save not yet known to be complete
    self._failed = False                   # a save failed and was reported: orbax re-raises it on every wait

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> Sequence[int]:
    return self._manager.all_steps()

  def due(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  # -- saving -----------------------------------------------------------------------------------------------------
  def save(self, step: int, state: Any, data_state: dict, *, wait: bool = False) -> None:
    """Saves `state` (a pytree of jax arrays) and this host's `data_state` (a flat dict of ints).

    Every host calls this; the data states of all hosts are gathered into one JSON item. Raises CheckpointError
    (after removing the half-written step) if this save, or the asynchronous one before it, fails.
    """
    all_data = gather_data_states(data_state)
    self._guard(self._manager.wait_until_finished)  # an earlier async failure is reported as that step's
    self._in_flight = step
    self._guard(lambda: self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"hosts": all_data})), force=True))
    if wait:
      self.wait()

  def wait(self) -> None:
    """Blocks until the save in flight is on disk; CheckpointError if it failed."""
    if not self._failed:
      self._guard(self._manager.wait_until_finished)
      self._in_flight = None

  def check(self) -> None:
    """Cheap, non-blocking: CheckpointError if the async save in flight has already failed."""
    if self._in_flight is not None:
      self._guard(self._manager.check_for_errors)

  def _guard(self, fn):
    try:
      return fn()
    except Exception as e:  # pylint: disable=broad-except  # any storage error: disk full, permission, GCS
      step, self._in_flight, self._failed = self._in_flight, None, True
      self._remove_temporaries()
      last = self._manager.latest_step()
      what = f"checkpoint step {step} to {self.directory / str(step)}" if step is not None else f"to {self.directory}"
      raise CheckpointError(
          f"Saving {what} failed: {one_line(e)}. Last good checkpoint: "
          f"{'step %d' % last if last is not None else 'none'}. Fix the storage (free space, permissions, "
          f"credentials) and rerun the same command to resume from there.") from e

  def _remove_temporaries(self) -> None:
    """Half-written `N.orbax-checkpoint-tmp*` directories of this run, on process 0 (the next run would skip them,
    but they hold space that a full disk needs back)."""
    if jax.process_index() != 0:
      return
    for path in self.directory.glob("*.orbax-checkpoint-tmp*"):
      try:
        path.rmtree() if path.is_dir() else path.unlink()
      except OSError as e:  # the storage that failed may refuse this too; the next run's orbax retries
        logging.warning("Could not remove the half-written %s: %s", path, one_line(e))

  # -- restoring --------------------------------------------------------------------------------------------------
  def restore(self, step: int, abstract_state: Any):
    """-> (state with the shardings of `abstract_state`, [data state of each host at save time])."""
    for required in ("state/_METADATA", "data/metadata"):  # without them orbax fails on an unrelated type check
      if not (self.directory / str(step) / required).exists():
        raise FileNotFoundError(f"{self.directory / str(step) / required} is missing")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]["hosts"]

  def restore_latest(self, abstract_state: Any):
    """-> (step, state, data states) of the newest step that restores, or None if there is no step at all.

    A step that fails to restore (on any host) is logged in one line, moved aside to `N.corrupt-<UTC time>` by
    process 0, and the next older step is tried. If steps exist but none restores: CheckpointError.
    """
    failures = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state, hosts = self.restore(step, abstract_state)
        error = None
      except Exception as e:  # pylint: disable=broad-except  # whatever the storage or the format throws
        error = e
      # Hosts read the same files, so they agree in practice; the vote keeps them on one step if they do not.
      if sharding.all_hosts_ok(error is None):
        return step, state, hosts
      cause = one_line(error) if error is not None else "another host could not restore it"
      moved = self._move_aside(step)
      failures.append(f"step {step} ({cause})")
      logging.error("Checkpoint step %d at %s cannot be restored: %s. Moved aside to %s; trying the previous step.",
                    step, self.directory / str(step), cause, moved)
    if failures:
      raise CheckpointError(
          f"No checkpoint in {self.directory} can be restored: {'; '.join(failures)}; each was moved aside as "
          f"N{CORRUPT_SUFFIX}<time>. To start over, rerun the same command (it trains from scratch now), or restore "
          "a copy of a good step directory into it.")
    return None

  def _move_aside(self, step: int) -> epath.Path:
    src = self.directory / str(step)
    dst = self.directory / f"{step}{CORRUPT_SUFFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    if jax.process_index() == 0:
      src.rename(dst)
    sharding.wait_for_every_host(f"lcl_checkpoint_moved_{step}")  # every host sees the move before it reloads
    self._manager.reload()
    return dst

  def restore_arrays(self, step: int):
    """-> (state as saved, a nested dict of arrays on the default device, [data state of each host]) without
    an abstract state: for inspection and tests, not for resuming a sharded run."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]["hosts"]

  def close(self) -> None:
    """Waits for the save in flight (CheckpointError if it fails) and stops orbax's threads."""
    try:
      self.wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        if not self._failed:  # after a reported failure there is nothing left to write
          raise


def one_line(error: BaseException) -> str:
  """The root cause of an exception (storage layers wrap it in pages of spec), first line, with its type."""
  chain = [error]
  while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  root = chain[-1]
  text = next((line.strip() for line in str(root).splitlines() if line.strip()), "")
  text = f"{type(root).__name__}: {text.rstrip('.')}" if text else type(root).__name__
  text = text if len(text) <= 500 else f"{text[:250]} ... {text[-245:]}"  # the OS error comes last, after paths
  # The cause a user acts on, wherever the layers put it (tensorstore reports a full disk as RESOURCE_EXHAUSTED).
  everything = " ".join(str(e) for e in chain)
  cause = next((c for c in _STORAGE_CAUSES if c in everything), None)
  if cause is None and "RESOURCE_EXHAUSTED" in everything:
    cause = "No space left or over quota (RESOURCE_EXHAUSTED)"
  return f"{cause}: {text[:300]}" if cause and cause not in text else text


_STORAGE_CAUSES = ("No space left on device", "Disk quota exceeded", "File too large", "Permission denied",
                   "Read-only file system")


def gather_data_states(data_state: dict) -> list:
  """Every host's data state (a flat {name: int}, any keys), in process order.

  Hosts' states differ in keys and size (a skip counter appears where a skip happened), so they travel as JSON bytes:
  one collective gathers the lengths, a second the bytes padded to the longest. Both have the same shape on every
  host, so no host can meet a collective of another shape.
  """
  if jax.process_count() == 1:
    return [{k: int(v) for k, v in data_state.items()}]
  encoded = np.frombuffer(json.dumps({k: int(v) for k, v in data_state.items()}, sort_keys=True).encode(), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.asarray([encoded.size], np.int32))).reshape(-1)
  width = -(-int(lengths.max()) // 256) * 256  # rounded up: few distinct shapes, few compilations
  padded = np.zeros(width, np.uint8)
  padded[:encoded.size] = encoded
  gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), width)
  return [json.loads(bytes(row[:n])) for row, n in zip(gathered, lengths)]


def restore_params(config, workdir: str, mesh, step: Optional[int] = None):
  """-> (params sharded over `mesh` as in training, the step restored). Latest checkpoint unless `step`."""
  abstract, _ = state_lib.abstract_train_state(config, mesh)
  target = {"params": abstract.params}
  # read_only: never clean up or delete anything in a directory a training job may be writing.
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(read_only=True, create=False),
                                  item_names=("state", "data"))
  try:
    steps = manager.all_steps()
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints.")
    step = max(steps) if step is None else step
    if step not in steps:
      raise FileNotFoundError(f"No checkpoint for step {step} in {workdir}/checkpoints; there are {sorted(steps)}.")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))
  finally:
    manager.close()
  return restored["state"]["params"], step
