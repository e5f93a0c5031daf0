"""Evaluates a checkpoint with every evaluator in the config (config.evals), outside training.

  python -m lcl_jax.evaluate --config=configs/vitb16_mmc4.py:runlocal --workdir=/tmp/lcl [--checkpoint_step=S]
  python -m lcl_jax.evaluate --config=configs/lcl_vitb16_laion_openclip.py --init_from=DIR [--workdir=/tmp/lcl]

--init_from evaluates a whole-model artefact instead (lcl_jax.export --whole_model, lcl_jax.convert); the
workdir, if given, only receives the results.

Restores only the parameters (the optimizer state stays on disk) with the shardings training gives them, on this
machine's mesh (which may differ from training's), read-only, so it is safe next to a running training job. Prints
{evaluator: {metric: value}} as JSON, writes scalars and pictures through the workdir's CLU writer (TensorBoard, at
the checkpoint's step) and PNG / JSON files into <workdir>/eval/step_<S>/.
"""
import json
import os
from typing import Optional

import jax
from absl import app, flags, logging

from lcl_jax import checkpoint, config_checks, init_from as init_from_lib, models, sharding, state as state_lib


def artefact_params(config, path: str, mesh):
  """-> (every parameter of a whole-model artefact, sharded over `mesh` as in training, its step or 0)."""
  abstract, shardings = state_lib.abstract_train_state(config, mesh)
  params, names = init_from_lib.load_into(abstract.params, shardings.params, path, config.model)
  missing = sorted(set(params) - set(names))
  if missing:
    raise config_checks.ConfigError(f"{path} holds no {', '.join(missing)}: evaluating needs a whole-model "
                                    "artefact (lcl_jax.export --whole_model, or lcl_jax.convert of a checkpoint "
                                    "with its text tower).")
  return params, 0


def evaluate(config, workdir: Optional[str], *, step: Optional[int] = None, write: bool = True,
             init_from: Optional[str] = None) -> dict:
  """Restores `step` (default: the latest) of `workdir`, or the artefact `init_from`, and runs every evaluator of
  config.evals. -> {name: scalars}. Results are written into `workdir` when given."""
  from clu import metric_writers  # pylint: disable=import-outside-toplevel
  from lcl_jax import evaluators  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh(config.sharding.mesh)
  if init_from:
    params, step = artefact_params(config, init_from, mesh)
    logging.info("Loaded the parameters of %s.", init_from)
  else:
    params, step = checkpoint.restore_params(config, workdir, mesh, step)
    logging.info("Restored the parameters of step %d from %s.", step, workdir)
  evals = evaluators.from_config(config, model=models.LCL(config.model), mesh=mesh)
  if not evals:
    raise ValueError("config.evals is empty: nothing to evaluate.")
  write = write and workdir is not None
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
  if not _WORKDIR.value and not _INIT_FROM.value:
    raise app.UsageError("Pass --workdir (a run's checkpoints) or --init_from (a whole-model artefact).")
  out = evaluate(_CONFIG.value, _WORKDIR.value, step=_STEP.value, init_from=_INIT_FROM.value)
  print(json.dumps(out, indent=2, sort_keys=True))


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  # Flags exist only when this module runs as the program: importing it must not claim flag names.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, path[:arg].", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir (checkpoints/ inside); with "
                                  "--init_from, where results are written (optional).")
  _STEP = flags.DEFINE_integer("checkpoint_step", None, "Step to evaluate (default: the latest checkpoint).")
  _INIT_FROM = flags.DEFINE_string("init_from", None, "A whole-model artefact folder to evaluate instead of a "
                                   "checkpoint (lcl_jax.export --whole_model, lcl_jax.convert).")
  flags.mark_flags_as_required(["config"])
  app.run(main)
