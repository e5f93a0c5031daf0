"""Evaluates a checkpoint with every evaluator in the config (config.evals), outside training.

  python -m lcl_jax.evaluate --config=configs/vitb16_mmc4.py:runlocal --workdir=/tmp/lcl [--checkpoint_step=S]

Restores only the parameters (the optimizer state stays on disk) with the shardings training gives them, on this
machine's mesh (which may differ from training's), read-only, so it is safe next to a running training job. Prints
{evaluator: {metric: value}} as JSON, writes scalars and pictures through the workdir's CLU writer (TensorBoard, at
the checkpoint's step) and PNG / JSON files into <workdir>/eval/step_<S>/.
"""
import json
import os
from typing import Optional

import jax
import orbax.checkpoint as ocp
from absl import app, flags, logging

from lcl_jax import models, sharding, state as state_lib


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


def evaluate(config, workdir: str, *, step: Optional[int] = None, write: bool = True) -> dict:
  """Restores `step` (default: the latest) and runs every evaluator of config.evals. -> {name: scalars}."""
  from clu import metric_writers  # pylint: disable=import-outside-toplevel
  from lcl_jax import evaluators  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh(config.sharding.mesh)
  params, step = restore_params(config, workdir, mesh, step)
  logging.info("Restored the parameters of step %d from %s.", step, workdir)
  evals = evaluators.from_config(config, model=models.LCL(config.model), mesh=mesh)
  if not evals:
    raise ValueError("config.evals is empty: nothing to evaluate.")
  writer = None
  if write:
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  try:
    results = evaluators.run_due(evals, params, step, writer=writer, workdir=workdir if write else None, force=True)
  finally:
    if writer is not None:
      writer.flush()
  return dict(step=step, results=results)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], "GPU")  # TensorFlow only reads data: accelerator memory is JAX's
  out = evaluate(_CONFIG.value, _WORKDIR.value, step=_STEP.value)
  print(json.dumps(out, indent=2, sort_keys=True))


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  # Defined only when run as a script: importing this module must not claim flag names.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, path[:runlocal].", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir (checkpoints/ inside).")
  _STEP = flags.DEFINE_integer("checkpoint_step", None, "Step to evaluate (default: the latest checkpoint).")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
