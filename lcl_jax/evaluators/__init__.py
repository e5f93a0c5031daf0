"""Evaluators of a pre-trained LCL model, run inside training every N steps and by `python -m lcl_jax.evaluate`.

One module per evaluator (zero_shot, retrieval, probes, perplexity) behind the small interface of base.py;
datasets.py opens evaluation sets, features.py runs the model's towers sharded over the mesh, pictures.py draws.
The registry lives here, above the evaluator modules, so none of them imports it (no cycle).
"""
from lcl_jax.evaluators import perplexity, probes, retrieval, zero_shot
from lcl_jax.evaluators.base import Context, EvalResult, Evaluator, run_due

# config.evals.<name>.type -> the evaluator class.
TYPES = {"zero_shot": zero_shot.ZeroShot, "retrieval": retrieval.Retrieval, "linear_probe": probes.LinearProbe,
         "attention_probe": probes.AttentionProbe, "perplexity": perplexity.Perplexity}


def from_config(config, *, model, mesh) -> list:
  """config.evals -> evaluators (opened: their datasets exist and are readable). No `evals`: none."""
  evals = config.get("evals") or {}
  context = Context(config, model, mesh)
  out = []
  for name, spec in evals.items():
    if spec.get("type") not in TYPES:
      raise ValueError(f"config.evals.{name}.type is {spec.get('type')!r}; expected one of {sorted(TYPES)}.")
    out.append(TYPES[spec["type"]](name, spec, context))
  for evaluator in out:
    evaluator.prepare()
  return out


__all__ = ["EvalResult", "Evaluator", "TYPES", "from_config", "run_due"]
