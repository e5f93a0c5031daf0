"""The training loop on a deterministic in-test batch source: checkpoints, exact resume, fault handling, logs."""
import collections
import contextlib
import glob
import os
import signal
import threading

import jax
import ml_collections
import numpy as np
import pytest
from jax._src import array as jax_array

from configs import vitb16_mmc4
from lcl_jax import config_checks, train
from tests import synthetic
from tests.test_model import tiny_config


class IndexedSource:
  """Batch k is a pure function of k (like the real pipeline's (seed, position) design)."""

  def __init__(self, config, sigterm_at=None, bad_from=None, bad_until=None):
    self.config, self.position = config, 0
    self.sigterm_at, self.bad_from, self.bad_until = sigterm_at, bad_from, bad_until

  def __iter__(self):
    return self

  def __next__(self):
    c = self.config.data
    num_chunks = len(jax.devices()) * self.config.optim.grad_accum_steps
    batch, _ = synthetic.make_batch(np.random.default_rng(self.position), num_chunks=num_chunks,
                                    rows_per_chunk=c.rows_per_batch // num_chunks,
                                    images_per_chunk=c.images_per_batch // num_chunks, seq_len=c.seq_len,
                                    patches=4, image_size=16, vocab_size=self.config.model.decoder.vocab_size)
    if self.bad_from is not None and self.bad_from <= self.position < (self.bad_until or np.inf):
      batch["tokens"][0, 2] = self.config.model.decoder.vocab_size + 1   # NaN embedding
    if self.sigterm_at is not None and self.position == self.sigterm_at:
      os.kill(os.getpid(), signal.SIGTERM)
    self.position += 1
    return batch, {"position": float(self.position)}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, hosts):
    self.position = hosts[0]["position"]


def tiny_train_config(total_steps=6):
  config = vitb16_mmc4.get_config("runlocal")
  config.model = tiny_config()
  config.sharding.mesh = dict(data=-1, fsdp=1, tensor=1)
  config.data.seq_len, config.data.rows_per_batch, config.data.images_per_batch = 48, 16, 32
  config.optim.total_steps, config.optim.warmup_steps = total_steps, 2
  config.ckpt.every_steps, config.log_every = 3, 3  # steps 1, 2 and 5 neither log, save nor read a logged step
  config.evals = ml_collections.ConfigDict()  # evaluators are exercised with the demo corpus elsewhere
  return config


@contextlib.contextmanager
def host_reads_per_step():
  """{loop step: reads of device values on the training loop's thread}, counted over a train.run inside.

  jax.transfer_guard_device_to_host does not apply to CPU arrays (nothing is transferred), so reads are counted
  where every host read of a multi-device jax.Array passes (float, int, bool, np.asarray, jax.device_get, .item()
  all call ArrayImpl._value; the step's outputs live on all 8 devices). Key 0 is the start-up (restore, init);
  reads after the last step count for the last step.
  """
  reads, step = collections.Counter(), [0]
  loop_thread = threading.current_thread()
  value, device_batches = jax_array.ArrayImpl._value, train.device_batches

  def counted(self):
    if threading.current_thread() is loop_thread:  # orbax's and the pipeline's threads do not hold the loop up
      reads[step[0]] += 1
    return value.fget(self)

  def numbered(*args, **kwargs):
    batches = device_batches(*args, **kwargs)
    try:
      for item in batches:
        step[0] += 1  # the loop's body for this batch runs until the next one is asked for
        yield item
    finally:
      batches.close()

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(jax_array.ArrayImpl, "_value", property(counted))
    patch.setattr(train, "device_batches", numbered)
    yield reads


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  config = tiny_train_config()
  with host_reads_per_step() as reads:
    state = train.run(config, workdir, data=IndexedSource(config))
  return workdir, state, reads


def test_run_writes_checkpoints_and_tensorboard(straight_run):
  workdir, state, _ = straight_run
  assert int(state.step) == 6
  steps = sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(workdir, "checkpoints", "*"))
                 if os.path.basename(p).isdigit())
  assert steps[-1] == 6 and len(steps) <= 3
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))


def test_throughput_eta_and_mfu_are_written_once_per_logged_step(straight_run):
  """steps_per_sec (with its ETA) comes from clu's ReportProgress only; images/tokens per second and MFU from the
  loop, once each, at every logged step."""
  from tensorboard.backend.event_processing import event_accumulator
  workdir = straight_run[0]
  written = collections.Counter()
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    for tag in ("steps_per_sec", "images_per_sec", "tokens_per_sec", "mfu", "useful_mfu"):
      written.update((tag, e.step) for e in acc.Tensors(tag))
  logged = {step for _, step in written}
  assert logged and {3, 6} <= logged, written  # log_every = 3 of 6 steps
  assert set(written.values()) == {1}, written


def test_steps_read_nothing_from_the_device_between_logging_steps(straight_run):
  """The host runs ahead of the device: a step reads device values only to log (the metrics of logging step N,
  once step N + 1 is dispatched), to save a checkpoint, and at the end."""
  config = tiny_train_config()
  log, save, last = config.log_every, config.ckpt.every_steps, config.optim.total_steps
  reads = straight_run[2]
  allowed = {0, last} | {s for s in range(1, last + 1) if s % save == 0 or (s > 1 and (s - 1) % log == 0)}
  quiet = [s for s in range(1, last + 1) if s not in allowed]
  assert quiet == [1, 2, 5]
  assert {s: reads[s] for s in quiet if reads[s]} == {}, "device values read at steps that neither log nor save"
  assert reads[log + 1] > 0  # the count sees the deferred read of logging step 3 (step 4 does not save)


def test_sigterm_then_resume_is_exact(straight_run, tmp_path):
  _, want, _ = straight_run
  config = tiny_train_config()
  source = IndexedSource(config, sigterm_at=3)
  stopped = train.run(config, str(tmp_path), data=source)
  assert 0 < int(stopped.step) < 6
  resumed_source = IndexedSource(config)
  got = train.run(config, str(tmp_path), data=resumed_source)
  assert int(got.step) == 6
  jax.tree.map(np.testing.assert_array_equal, got.params, want.params)
  jax.tree.map(np.testing.assert_array_equal, got.opt_state, want.opt_state)


def test_run_stops_after_too_many_nonfinite_steps(tmp_path):
  """A streak of skipped steps longer than the limit that begins and ends between two logging steps (5 and 10:
  steps 5-8 are skipped, 9 and 10 are not) still stops the run, though no logged step sees it."""
  config = tiny_train_config(total_steps=20)
  config.optim.max_consecutive_nonfinite, config.log_every, config.ckpt.every_steps = 3, 5, 4
  with pytest.raises(train.TooManyNonFiniteSteps, match="4 non-finite steps in a row.*max_consecutive_nonfinite"):
    train.run(config, str(tmp_path), data=IndexedSource(config, bad_from=4, bad_until=8))
  # The last checkpoint before the bad batches (step 4) is intact; the run stopped before step 12's save.
  from lcl_jax import checkpoint
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), every_steps=4, keep=3)
  assert sorted(ckpt.all_steps()) == [4, 8]
  ckpt.close()


def test_preemption_on_several_processes_is_jaxs_protocol(monkeypatch):
  """Several processes: the stop step comes from JAX's preemption sync protocol, asked once per step, and no Python
  SIGTERM handler is installed (it would replace JAX's notifier: no host would hear of the notice; the 2-process
  SIGTERM run is in test_multihost). A disabled protocol fails at start, in one line."""
  asked = []

  def sync_point(step):
    asked.append(step)
    return step == 7

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(train.multihost_utils, "reached_preemption_sync_point", sync_point)
  handler = signal.getsignal(signal.SIGTERM)
  with train.Preemption() as preemption:
    assert signal.getsignal(signal.SIGTERM) is handler
    preemption.start(5)
    assert [preemption.reached(step) for step in (6, 7)] == [False, True]
  assert asked == [0, 5, 6, 7]

  def disabled(step):
    raise RuntimeError("Preemption sync manager has not been initialized.")
  monkeypatch.setattr(train.multihost_utils, "reached_preemption_sync_point", disabled)
  with pytest.raises(config_checks.ConfigError, match="jax_enable_preemption_service=False"):
    train.Preemption()
