"""The training loop, top to bottom: mesh -> data -> abstract state -> shardings -> restore or init -> compiled
step -> loop with log / checkpoint / preemption cadences inline."""
import functools
import os
import queue
import signal
import threading
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils

from lcl_jax import checkpoint, config_checks, evaluators as evaluators_lib, metrics as metrics_lib, sharding, state as state_lib, train_step as ts, workdir_lock


class TooManyNonFiniteSteps(RuntimeError):
  pass


class PreemptionFlag:
  """Set by SIGTERM (TPU VM preemption, `scancel`); every host agrees on the step to stop at."""

  def __init__(self):
    self._flag = threading.Event()
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving at the next step and exiting.")
    self._flag.set()

  def should_stop(self) -> bool:
    local = self._flag.is_set()
    if jax.process_count() == 1:
      return local
    # One tiny collective per step so every host stops (and saves) at the same step.
    return bool(np.any(multihost_utils.process_allgather(np.asarray(local))))

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def global_batch(host_batch, mesh):
  """This host's numpy chunks -> global jax.Arrays split over the data axes."""
  data_sharding = sharding.data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(data_sharding, v) for k, v in host_batch.items()}


def prefetch_to_device(data, mesh, size=2):
  """Background thread: next host batch -> global arrays, `size` ahead. Yields (batch, data state, data metrics)
  where the data state is the pipeline's state right after that batch (what a checkpoint of it must store)."""
  q = queue.Queue(maxsize=size)
  stop = threading.Event()

  def produce():
    try:
      for host_batch, data_metrics in data:
        item = (global_batch(host_batch, mesh), data.get_state(), data_metrics)
        while not stop.is_set():
          try:
            q.put(item, timeout=0.5)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put(StopIteration())
    except BaseException as e:  # surface pipeline errors in the training thread
      q.put(e)

  thread = threading.Thread(target=produce, daemon=True, name="prefetch_to_device")
  thread.start()
  try:
    while True:
      item = q.get()
      if isinstance(item, StopIteration):
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while thread.is_alive():  # it may be blocked handing over an item or waiting for the next batch
      try:
        q.get(timeout=0.1)
      except queue.Empty:
        pass


def run(config: ml_collections.ConfigDict, workdir: str, *, data=None) -> ts.TrainState:
  """Trains until config.optim.total_steps (or preemption). `data` overrides the configured pipeline (tests)."""
  mesh = sharding.make_mesh(config.sharding.mesh)
  config_checks.check(config, num_data_shards=sharding.num_data_shards(mesh))
  lock = _lock_workdir(workdir, force=config.ckpt.force_unlock)
  logging.info("Config:\n%s", config)  # after the checks: a bad value or a busy workdir is not buried under it
  try:
    return _train(config, workdir, mesh, data)
  finally:
    if lock is not None:
      lock.release()


def _lock_workdir(workdir: str, *, force: bool):
  """Process 0 holds the workdir's lock for the whole run; if it cannot, every host stops."""
  lock, refused = None, None
  if jax.process_index() == 0:
    try:
      lock = workdir_lock.acquire(workdir, force=force)
    except workdir_lock.WorkdirLocked as e:
      refused = e
  if not sharding.all_hosts_ok(refused is None):
    if lock is not None:
      lock.release()
    raise refused or workdir_lock.WorkdirLocked(workdir, f"{workdir}/{workdir_lock.LOCK_NAME}", None,
                                                " (process 0 could not take the lock; its log names the holder)")
  return lock  # None on the other processes


def _train(config, workdir, mesh, data):
  # ---------------------------------------------------------------- mesh
  rules = sharding.rules(config)
  data_shards = sharding.num_data_shards(mesh)
  accum = config.optim.grad_accum_steps
  num_chunks = data_shards * accum
  logging.info("Mesh %s over %d devices (%d processes); %d data shards x %d micro-batches.",
               dict(mesh.shape), mesh.size, jax.process_count(), data_shards, accum)

  # ---------------------------------------------------------------- data
  if data is None:
    from data_pipelines import pipeline  # tensorflow stays out of imports that do not train
    data = pipeline.Pipeline(config, num_chunks=num_chunks, process_index=jax.process_index(),
                             process_count=jax.process_count())
  rows, image_slots = config.data.rows_per_batch, config.data.images_per_batch
  seq_len = config.data.seq_len

  # ---------------------------------------------------------------- model, optimizer, abstract state
  spec = state_lib.state_spec(config, mesh)
  model, tx, schedule = spec.model, spec.tx, spec.schedule
  state_sharding, abstract_state = spec.shardings, spec.abstract
  log_parameters(spec.boxed.params, state_sharding.params)

  # ---------------------------------------------------------------- restore or init
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=config.ckpt.every_steps,
                                 keep=config.ckpt.keep, keep_every=config.ckpt.keep_every or None)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    resumed = ckpt.restore_latest(abstract_state)
    if resumed is not None:
      latest, state, data_states = resumed
      data.set_state(data_states)
      logging.info("Resumed from step %d.", latest)
    else:
      latest = None
      state = jax.jit(lambda: nn.unbox(spec.init_fn()), out_shardings=state_sharding)()

    # -------------------------------------------------------------- compiled step
    step_fn = functools.partial(ts.train_step, model=model, tx=tx, loss_config=config.loss,
                                special_tokens=dict(config.model.special_tokens), mesh=mesh,
                                num_chunks=data_shards, accum_steps=accum, lr_schedule=schedule)
    batch_sharding = sharding.data_sharding(mesh)
    compiled = jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(state_sharding, None), donate_argnums=0).lower(
                           abstract_state, spec.batch).compile()
    log_memory(compiled)

    # -------------------------------------------------------------- loop
    total_steps = config.optim.total_steps
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if latest is None:
      writer.write_hparams(_flat_hparams(config))
    if jax.process_index() == 0:  # export and evaluate read the run's config from here
      epath.Path(workdir).mkdir(parents=True, exist_ok=True)
      epath.Path(workdir, "config.json").write_text(config.to_json_best_effort(indent=2))
    evals = evaluators_lib.from_config(config, model=model, mesh=mesh)
    hooks = [periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=config.log_every)]
    if config.get("profile") and jax.process_index() == 0:
      hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5))
    flops = metrics_lib.model_flops_per_step(config.model, rows=rows, image_slots=image_slots, seq_len=seq_len,
                                             generation=bool(config.loss.generation_weight))
    peak, peak_source = metrics_lib.device_peak_flops()
    logging.info("Model FLOPs per step %.3e; peak per device %.3e (%s).", flops, peak, peak_source)

    preemption = PreemptionFlag()
    deferred = metrics_lib.DeferredMetrics()
    step = int(state.step)  # == batches consumed: skipped (non-finite) steps count too
    data_state = data.get_state()
    last_time, last_step = time.perf_counter(), step
    batches = prefetch_to_device(data, mesh) if step < total_steps else iter(())
    try:
      for batch, data_state, data_metrics in batches:
        state, step_metrics = compiled(state, batch)
        step += 1
        ckpt.check()  # a failed async save stops the run now, not at the next save
        done = deferred.push(step, dict(step_metrics, **{f"data/{k}": v for k, v in data_metrics.items()}))
        if done is not None:
          _check_nonfinite(done[1], config)
          if done[0] % config.log_every == 0:
            now = time.perf_counter()
            sec_per_step = (now - last_time) / max(step - last_step, 1)
            last_time, last_step = now, step
            writer.write_scalars(done[0], dict(
                done[1], steps_per_sec=1 / sec_per_step,
                images_per_sec=done[1].get("num_valid_images", 0.0) / sec_per_step,
                tokens_per_sec=rows * seq_len / sec_per_step,
                mfu=flops / (sec_per_step * mesh.size * peak)))
        for hook in hooks:
          hook(step)
        evaluators_lib.run_due(evals, state.params, step, writer=writer, workdir=workdir)
        if preemption.should_stop():
          ckpt.save(step, state, data_state, wait=True)
          logging.warning("Saved step %d after SIGTERM; exiting.", step)
          break
        if step >= total_steps:
          break
        if ckpt.due(step):
          ckpt.save(step, state, data_state)
      done = deferred.flush()
      if done is not None:
        writer.write_scalars(done[0], done[1])
        _check_nonfinite(done[1], config)
      if ckpt.latest_step() != step:
        ckpt.save(step, state, data_state, wait=True)
    finally:
      preemption.restore()
      if hasattr(batches, "close"):
        batches.close()  # its thread must stop before the data closes, or it asks the closed pipeline for more
      ckpt.close()
      writer.flush()
      if hasattr(data, "close"):
        data.close()
  return state


def _check_nonfinite(metrics, config):
  limit = config.optim.max_consecutive_nonfinite
  if metrics.get("step_skipped"):
    logging.warning("Step skipped: non-finite loss or gradient (%d in a row, %d in total).",
                    metrics["nonfinite_in_a_row"], metrics["nonfinite_total"])
  if metrics.get("nonfinite_in_a_row", 0) >= limit:
    raise TooManyNonFiniteSteps(
        f"{int(metrics['nonfinite_in_a_row'])} non-finite steps in a row (config.optim.max_consecutive_nonfinite="
        f"{limit}); the last good checkpoint is intact. Lower config.optim.peak_lr, check the data, or raise "
        "the limit.")


def _flat_hparams(config):
  flat = {}

  def walk(prefix, node):
    for k, v in node.items():
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        walk(f"{prefix}{k}.", v)
      elif isinstance(v, (int, float, str, bool)):
        flat[f"{prefix}{k}"] = v
  walk("", config)
  return flat


def log_parameters(boxed_params, param_sharding):
  """Parameter counts per tower and the sharding of each parameter group, once."""
  if jax.process_index() != 0:
    return
  flat = jax.tree_util.tree_flatten_with_path(boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  shardings = jax.tree.leaves(param_sharding)
  towers, groups = {}, {}
  for (path, leaf), sh in zip(flat, shardings):
    keys = [getattr(k, "key", str(k)) for k in path]
    value = nn.unbox(leaf)
    towers[keys[0]] = towers.get(keys[0], 0) + int(np.prod(value.shape))
    groups.setdefault((keys[0], keys[-1], str(sh.spec)), 0)
    groups[(keys[0], keys[-1], str(sh.spec))] += 1
  for tower, count in towers.items():
    logging.info("params %-14s %14s", tower, f"{count:,}")
  for (tower, leaf, spec), n in sorted(groups.items()):
    logging.info("sharding %-12s %-12s x%-4d %s", tower, leaf, n, spec)


def log_memory(compiled):
  try:
    m = compiled.memory_analysis()
  except Exception:  # not every backend implements it
    return
  if m is not None:
    logging.info("Compiled step memory per device: arguments %.2f GiB, outputs %.2f GiB, temporaries %.2f GiB.",
                 m.argument_size_in_bytes / 2**30, m.output_size_in_bytes / 2**30, m.temp_size_in_bytes / 2**30)
