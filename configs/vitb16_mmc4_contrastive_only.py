"""Ablation of vitb16_mmc4.py (paper table 6a): contrastive-only (CLIP-like: the decoder is a causal text encoder).

  python -m lcl_jax.main --config=configs/vitb16_mmc4_contrastive_only.py --workdir=gs://BUCKET/run
  python -m lcl_jax.main --config=configs/vitb16_mmc4_contrastive_only.py:runlocal --workdir=/tmp/lcl
"""
from configs import vitb16_mmc4


def get_config(arg=None):
  config = vitb16_mmc4.get_config(arg)
  config.name = "vitb16_mmc4_contrastive_only"
  config.loss.generation_weight = 0.0
  return config
