"""Evaluators of a pre-trained LCL model, run inside training every N steps and by `python -m lcl_jax.evaluate`.

One module per evaluator (zero_shot, retrieval, probes, perplexity) behind the small interface of base.py;
datasets.py opens evaluation sets, features.py runs the model's towers sharded over the mesh, pictures.py draws.
"""
from lcl_jax.evaluators.base import EvalResult, Evaluator, from_config, run_due

__all__ = ["EvalResult", "Evaluator", "from_config", "run_due"]
