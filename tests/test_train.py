"""The training loop on a deterministic in-test batch source: checkpoints, exact resume, fault handling, logs."""
import glob
import os
import signal

import jax
import ml_collections
import numpy as np
import pytest

from configs import vitb16_mmc4
from lcl_jax import train
from tests import synthetic
from tests.test_model import tiny_config


class IndexedSource:
  """Batch k is a pure function of k (like the real pipeline's (seed, position) design)."""

  def __init__(self, config, sigterm_at=None, bad_from=None):
    self.config, self.position = config, 0
    self.sigterm_at, self.bad_from = sigterm_at, bad_from

  def __iter__(self):
    return self

  def __next__(self):
    c = self.config.data
    num_chunks = len(jax.devices()) * self.config.optim.grad_accum_steps
    batch, _ = synthetic.make_batch(np.random.default_rng(self.position), num_chunks=num_chunks,
                                    rows_per_chunk=c.rows_per_batch // num_chunks,
                                    images_per_chunk=c.images_per_batch // num_chunks, seq_len=c.seq_len,
                                    patches=4, image_size=16, vocab_size=self.config.model.decoder.vocab_size)
    if self.bad_from is not None and self.position >= self.bad_from:
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
  config.ckpt.every_steps, config.log_every = 2, 1
  config.evals = ml_collections.ConfigDict()  # evaluators are exercised with the demo corpus elsewhere
  return config


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  config = tiny_train_config()
  state = train.run(config, workdir, data=IndexedSource(config))
  return workdir, state


def test_run_writes_checkpoints_and_tensorboard(straight_run):
  workdir, state = straight_run
  assert int(state.step) == 6
  steps = sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(workdir, "checkpoints", "*"))
                 if os.path.basename(p).isdigit())
  assert steps[-1] == 6 and len(steps) <= 3
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))


def test_sigterm_then_resume_is_exact(straight_run, tmp_path):
  _, want = straight_run
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
  config = tiny_train_config(total_steps=20)
  config.optim.max_consecutive_nonfinite = 3
  with pytest.raises(train.TooManyNonFiniteSteps, match="max_consecutive_nonfinite"):
    train.run(config, str(tmp_path), data=IndexedSource(config, bad_from=4))
  # The last good checkpoint (step 4, before the bad batches) is intact and finite.
  from lcl_jax import checkpoint
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), every_steps=2, keep=3)
  assert 4 in ckpt.all_steps()
