"""Studies built on lcl_jax.train.run: `python -m lcl_jax.experiments.ablation` (the loss ablation, table 6a)."""
