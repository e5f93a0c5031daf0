"""The training loop, top to bottom: mesh -> data -> abstract state -> shardings -> restore or init -> compiled
step -> loop with log / checkpoint / preemption cadences inline."""
import functools
import os
import signal
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath
from clu import metric_writers, parameter_overview, periodic_actions
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from lcl_jax import checkpoint, config_checks, evaluators as evaluators_lib, init_from, metrics as metrics_lib, sharding, state as state_lib, summary, train_step as ts, workdir_lock


class TooManyNonFiniteSteps(RuntimeError):
  pass


class MetricsWriteError(RuntimeError):
  pass


class Preemption:
  """SIGTERM (TPU VM preemption, `scancel`, a spot VM's notice) -> every host saves the same step and exits.

  Several processes: JAX's preemption sync protocol, which jax.distributed.initialize starts (jax config
  `jax_enable_preemption_service`, on by default). Its notifier catches SIGTERM on the host that gets it and posts
  the notice to the coordination service; a thread on every host then agrees with the others (over the coordination
  service, no device collective) on the step after the furthest any host has reached, and
  `reached_preemption_sync_point(step)` is True at that step on every host. Asking is a mutex, not a wait, except
  while that agreement runs. No Python SIGTERM handler is installed then: a process has one handler per signal, and
  ours would replace JAX's notifier, so no host would hear of the notice. Orbax's
  CheckpointManager.reached_preemption is the same call but answers False when the service is off (a run that never
  saves on preemption) and on one process, so it is not used: a disabled service fails at start instead.

  One process: reached_preemption_sync_point is always False without jax.distributed, so a SIGTERM handler sets a
  flag and the loop stops after the step it is on.
  """

  def __init__(self):
    self._distributed = jax.process_count() > 1
    self._flag = threading.Event()
    self._previous = None
    if self._distributed:
      try:
        multihost_utils.reached_preemption_sync_point(0)  # 0: the protocol's counter before any call; raises if off
      except RuntimeError:
        raise config_checks.ConfigError(
            "JAX's preemption service is off (jax_enable_preemption_service=False): the hosts could not agree on "
            "a step to save at after a SIGTERM. Turn it back on (the default) before jax.distributed.initialize."
        ) from None
    else:
      # None: the handler before was not Python's (cannot be put back); the default then.
      self._previous = signal.signal(signal.SIGTERM, self._handle) or signal.SIG_DFL

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving at the next step and exiting.")
    self._flag.set()

  def start(self, step: int) -> None:
    """Sets the protocol's counter to `step` (at most the step the loop starts from; every step after it is asked
    about) before restore and compile: a notice that comes before the first step then sets the sync point to
    step + 1, which every host's loop passes, instead of 1 (its counter's start), which a resumed run never asks."""
    if self._distributed:
      multihost_utils.reached_preemption_sync_point(step)

  def reached(self, step: int) -> bool:
    """Asked once per step, after it is dispatched, for consecutive steps: True where every host stops."""
    if not self._distributed:
      return self._flag.is_set()
    if not multihost_utils.reached_preemption_sync_point(step):
      return False
    logging.warning("Preemption notice (SIGTERM to a process of this run): every process saves step %d.", step)
    return True


def global_batch(host_batch, shardings):
  """This host's numpy chunks -> global jax.Arrays on `shardings` (sharding.batch_shardings)."""
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in host_batch.items()}


def device_batches(data, shardings):
  """Yields (global batch, data state, data metrics), the data state being the pipeline's right after that batch
  (what a checkpoint of it must store). No thread of its own: the pipeline's thread prepares host batches ahead
  (config.data.prefetch_batches), and the copy to the devices is dispatched asynchronously from the loop."""
  for host_batch, data_metrics in data:
    yield global_batch(host_batch, shardings), data.get_state(), data_metrics


def run(config: ml_collections.ConfigDict, workdir: str, *, data=None) -> ts.TrainState:
  """Trains until config.optim.total_steps (or preemption). `data` overrides the configured pipeline (tests)."""
  mesh = sharding.make_mesh(config.sharding.mesh)
  config_checks.check(config, num_data_shards=sharding.num_data_shards(mesh))
  lock = _lock_workdir(workdir, force=config.ckpt.force_unlock)
  logging.info("Config:\n%s", config)  # after the checks: a bad value or a busy workdir is not buried under it
  try:
    with Preemption() as preemption:  # from here a SIGTERM saves a step, also one that comes during compilation
      return _train(config, workdir, mesh, data, preemption)
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


def _train(config, workdir, mesh, data, preemption):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=config.ckpt.every_steps,
                                 keep=config.ckpt.keep, keep_every=config.ckpt.keep_every or None)
  # Before opening the data, restoring and compiling (minutes on a pod): a notice during them stops the first step.
  preemption.start(ckpt.latest_step() or 0)

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
  log_parameters(abstract_state.params)

  # ---------------------------------------------------------------- restore or init
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    resumed = ckpt.restore_latest(abstract_state)
    if resumed is not None:
      latest, state, data_states = resumed
      data.set_state(data_states)
      logging.info("Resumed from step %d.", latest)
    else:
      latest = None
      state = jax.jit(lambda: nn.unbox(spec.init_fn()), out_shardings=state_sharding)()
      if config.get("init_from"):
        params, names = init_from.load_into(state.params, state_sharding.params, config.init_from, config.model)
        state = state.replace(params=params)
        logging.info("Parameters %s from %s; the rest and the optimizer state are fresh.", names, config.init_from)

    # -------------------------------------------------------------- compiled step
    step_fn = functools.partial(ts.train_step, model=model, tx=tx, loss_config=config.loss,
                                special_tokens=dict(config.model.special_tokens), mesh=mesh,
                                num_chunks=data_shards, accum_steps=accum, lr_schedule=schedule)
    batch_sharding, scalar = sharding.batch_shardings(mesh, rules), NamedSharding(mesh, PartitionSpec())

    def step_and_streak(state, batch, longest):
      # The longest run of skipped (non-finite) steps since the last logged step, kept on the device: the loop reads
      # it with the logged metrics, and a run can begin and end between two logged steps (the state only carries
      # the current run).
      state, metrics = step_fn(state, batch)
      return state, metrics, jnp.maximum(longest, state.nonfinite_in_a_row)

    compiled = jax.jit(step_and_streak, in_shardings=(state_sharding, batch_sharding, scalar),
                       out_shardings=(state_sharding, None, scalar), donate_argnums=0).lower(
                           abstract_state, spec.batch, jax.ShapeDtypeStruct((), jnp.int32, sharding=scalar)).compile()
    log_memory(compiled)
    sharding.wait_for_every_host("lcl_jax_train_step_compiled")
    no_streak = jax.jit(lambda: jnp.zeros((), jnp.int32), out_shardings=scalar)()

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
    # The LM head's share depends on the batch (it runs on target positions): MFU counts the positions it computed,
    # useful_mfu those with a target, both read with the logged metrics (whole-batch counts). As with remat, the
    # extra forward of gradient accumulation (lcl_jax/train_step.py) is not model FLOPs.
    generation = bool(config.loss.generation_weight)
    body_flops = metrics_lib.model_flops_per_step(config.model, rows=rows, image_slots=image_slots, seq_len=seq_len,
                                                  generation=False)
    lm_flops = lambda positions: metrics_lib.lm_head_flops(config.model, positions) if generation else 0.0
    planned, _ = metrics_lib.lm_positions_estimate(config.model, config.loss, rows=rows, image_slots=image_slots,
                                                   seq_len=seq_len, num_chunks=data_shards * accum)
    peak, peak_source = metrics_lib.device_peak_flops()
    logging.info("Model FLOPs per step %.3e (LM head at %d positions if every image slot is filled); peak per "
                 "device %.3e (%s).", body_flops + lm_flops(planned), planned, peak, peak_source)

    # Between logged steps the loop reads nothing from the devices, so the host dispatches ahead of them: the
    # metrics of the other steps are dropped unread, the non-finite guard reads the longest skipped run with the
    # logged metrics, and preemption is agreed on without a device collective. Saves and evaluators read at their
    # own cadence.
    deferred = metrics_lib.DeferredMetrics()
    step = int(state.step)  # == batches consumed: skipped (non-finite) steps count too
    data_state = data.get_state()
    last_time, last_step = time.perf_counter(), step
    longest, kept_step, checked_step = no_streak, step, step
    batches = device_batches(data, batch_sharding) if step < total_steps else iter(())
    finished = False
    try:
      for batch, data_state, data_metrics in batches:
        state, step_metrics, longest = compiled(state, batch, longest)
        step += 1
        ckpt.check()  # a failed async save stops the run now, not at the next save
        stop = preemption.reached(step)
        kept = None
        if step % config.log_every == 0 or step >= total_steps or stop:  # the last step is read too (flush)
          kept = dict(step_metrics, nonfinite_longest_streak=longest,
                      **{f"data/{k}": v for k, v in data_metrics.items()})
          longest, kept_step = no_streak, step
        done = deferred.push(step, kept)  # a logged step's metrics, read now that the next step is dispatched
        if done is not None:
          _check_nonfinite(done[1], config, after=checked_step, step=done[0])
          checked_step = done[0]
          now = time.perf_counter()
          sec_per_step = (now - last_time) / max(step - last_step, 1)
          last_time, last_step = now, step
          mfu = lambda key: ((body_flops + lm_flops(done[1].get(key, 0.0)))
                             / (sec_per_step * mesh.size * peak))
          # steps_per_sec (and the ETA in the log) come from clu's ReportProgress below, once.
          writer.write_scalars(done[0], dict(
              done[1], images_per_sec=done[1].get("num_valid_images", 0.0) / sec_per_step,
              tokens_per_sec=rows * seq_len / sec_per_step,
              mfu=mfu("lm_head_positions"), useful_mfu=mfu("num_text_targets")))
        for hook in hooks:
          hook(step)
        evaluators_lib.run_due(evals, state.params, step, writer=writer, workdir=workdir)
        if stop:
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
        _check_nonfinite(done[1], config, after=checked_step, step=done[0])
      if kept_step != step:  # the data ran out between logged steps: their skipped runs are not checked yet
        _check_nonfinite(metrics_lib.to_floats(dict(nonfinite_longest_streak=longest,
                                                    nonfinite_total=state.nonfinite_total)),
                         config, after=kept_step, step=step)
      if ckpt.latest_step() != step:
        ckpt.save(step, state, data_state, wait=True)
      finished = True
    finally:
      if hasattr(batches, "close"):
        batches.close()
      ckpt.close()
      _flush_metrics(writer, workdir, error_in_flight=not finished)
      if hasattr(data, "close"):
        data.close()
  return state


def _flush_metrics(writer, workdir, *, error_in_flight: bool):
  """A storage that failed a save usually fails the event files too: that second failure must not replace the
  first error, and on its own it ends the run in one line."""
  try:
    writer.flush()
  except Exception as e:  # clu re-raises the TensorBoard writer's failure from its thread as AsyncError
    if error_in_flight:
      logging.error("Writing metrics failed too: %s", checkpoint.one_line(e))
      return
    raise MetricsWriteError(f"Writing metrics to {workdir} failed: {checkpoint.one_line(e)}. Fix the storage (space, "
                            f"permissions); the checkpoints are intact.") from e


def _check_nonfinite(metrics, config, *, after: int, step: int):
  """`metrics` read at `step`: its nonfinite_longest_streak covers the steps after `after` (the last checked)."""
  limit = config.optim.max_consecutive_nonfinite
  longest = int(metrics["nonfinite_longest_streak"])
  if longest:
    logging.warning("Steps %d-%d: steps skipped for a non-finite loss or gradient, at most %d in a row (%d skipped "
                    "since the start).", after + 1, step, longest, int(metrics["nonfinite_total"]))
  if longest >= limit:
    raise TooManyNonFiniteSteps(
        f"{longest} non-finite steps in a row (config.optim.max_consecutive_nonfinite={limit}); the last good "
        "checkpoint is intact. Lower config.optim.peak_lr, check the data, or raise the limit.")


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


def log_parameters(abstract_params):
  """clu's parameter overview (name, shape, dtype, size, mesh axes per dimension) and the count per tower, once."""
  parameter_overview.log_parameter_overview(abstract_params, include_stats="sharding", jax_logging_process=0,
                                            msg="Parameters (sharding: the mesh axes of each dimension):")
  if jax.process_index() == 0:
    for tower, count in summary.tower_counts(abstract_params).items():
      logging.info("params %-28s %14s", tower, f"{count:,}")


def log_memory(compiled):
  try:
    m = compiled.memory_analysis()
  except Exception:  # not every backend implements it
    return
  if m is not None:
    logging.info("Compiled step memory per device: arguments %.2f GiB, outputs %.2f GiB, temporaries %.2f GiB.",
                 m.argument_size_in_bytes / 2**30, m.output_size_in_bytes / 2**30, m.temp_size_in_bytes / 2**30)
