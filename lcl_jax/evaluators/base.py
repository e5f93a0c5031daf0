"""The evaluator interface, the factory that builds evaluators from `config.evals`, and writing their results.

An evaluator has a `name`, an `every_steps` cadence and `run(params, step) -> EvalResult`. `config.evals` maps a
name to a spec `{type, every_steps, dataset, split, ...}`; `type` picks the class by a plain dict lookup (`types` in
`from_config`), and a spec key the type does not know is an error, so a typo never silently falls back to a default.
Results go to the same CLU writer as training (scalars `eval/<name>/<metric>`, images `eval/<name>/<picture>`) and,
as PNG and JSON, to `<workdir>/eval/step_<step>/`.
"""
import abc
import dataclasses
import functools
import json
import os
import time
from typing import Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from data_pipelines import storage
from lcl_jax import sharding
from lcl_jax.evaluators import datasets, features

# Spec keys every evaluator takes (each type adds its own DEFAULTS).
COMMON = dict(
    type="",            # zero_shot | retrieval | linear_probe | attention_probe | perplexity
    every_steps=0,      # run inside training every this-many steps (0: only from lcl_jax.evaluate)
    dataset="demo",     # "demo" (held-out digits), a .npz in that layout, or a TFDS name
    split="test",       # TFDS split (ignored by .npz sets)
    data_dir="",        # TFDS data_dir; "" -> config.data.data_dir
    max_examples=0,     # use the first this-many examples (0: all)
    batch_size=256,     # global images / texts per device call (rounded up to a multiple of the data shards)
    image_key="image",  # TFDS feature names
    label_key="label",
    caption_key="",     # e.g. "captions/text" for coco_captions
)


@dataclasses.dataclass
class EvalResult:
  scalars: dict                                        # metric -> float
  images: dict = dataclasses.field(default_factory=dict)  # picture -> uint8 [H, W, 3]


class Context:
  """What evaluators of one run share: the config, the model's sharded towers (one compile per shape for all
  evaluators), and the tokenizer (loaded on first use)."""

  def __init__(self, config, model, mesh):
    self.config, self.model, self.mesh = config, model, mesh
    self.runner = features.ShardedRunner(mesh, sharding.rules(config))
    self.encoders = features.Encoders(model, self.runner)

  @functools.cached_property
  def tokenizer(self):
    return datasets.load_tokenizer(self.config)


class Evaluator(abc.ABC):
  DEFAULTS: dict = {}

  def __init__(self, name: str, spec, context: Context):
    allowed = dict(COMMON, **self.DEFAULTS)
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
      raise ValueError(f"config.evals.{name}: unknown keys {unknown} for type {spec.get('type')!r}; "
                       f"known: {sorted(allowed)}.")
    allowed.update({k: spec[k] for k in spec})
    self.name = name
    self.spec = ml_collections.ConfigDict(allowed)
    self.every_steps = int(self.spec.every_steps)
    self.context = context
    self._set = None

  def eval_set(self):
    """The spec's image set, opened once (.npz sets stay in memory; TFDS sets stream again on every run)."""
    if self._set is None:
      self._set = datasets.load(self.spec, self.context.config)
    return self._set

  def prepare(self) -> None:
    """Opens the data, so a missing dataset fails when the run starts, not thousands of steps into it."""
    self.eval_set()

  def due(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  @abc.abstractmethod
  def run(self, params, step: int) -> EvalResult:
    """Evaluates `params` (the model's parameter tree, sharded or not) and returns scalars and pictures."""


def run_due(evaluators, params, step: int, *, writer=None, workdir: Optional[str] = None,
            force: bool = False) -> dict:
  """Runs the evaluators due at `step` (all of them with force=True) and writes their results.

  Every process must call this (the towers run on the whole mesh); only process 0 writes files.
  Returns {name: scalars}.
  """
  results = {}
  for evaluator in evaluators:
    if not (force or evaluator.due(step)):
      continue
    start = time.perf_counter()
    result = evaluator.run(params, step)
    result.scalars["seconds"] = time.perf_counter() - start
    logging.info("eval %s at step %d: %s", evaluator.name, step,
                 {k: round(v, 4) for k, v in result.scalars.items()})
    write(evaluator.name, result, step, writer=writer, workdir=workdir)
    results[evaluator.name] = result.scalars
  return results


def write(name: str, result: EvalResult, step: int, *, writer=None, workdir: Optional[str] = None) -> None:
  if writer is not None:
    writer.write_scalars(step, {f"eval/{name}/{k}": v for k, v in result.scalars.items()})
    if result.images:
      writer.write_images(step, {f"eval/{name}/{k}": v[None] for k, v in result.images.items()})
  if workdir is None or jax.process_index() != 0:
    return
  folder = os.path.join(workdir, "eval", f"step_{step:08d}")  # workdirs may be gs://
  storage.makedirs(folder)
  with storage.open_file(os.path.join(folder, f"{name}.json"), "w") as f:
    json.dump(result.scalars, f, indent=2, sort_keys=True)
  for key, image in result.images.items():
    with storage.open_file(os.path.join(folder, f"{name}-{key}.png"), "wb") as f:
      f.write(datasets.encode_png(np.asarray(image, np.uint8)))
