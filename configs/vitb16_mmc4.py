"""Ablation model (paper table 6): ViT-B/16 at 224 px + OPT-125M-shaped decoder on MMC4.

  python -m lcl_jax.main --config=configs/vitb16_mmc4.py --workdir=gs://BUCKET/run
  python -m lcl_jax.main --config=configs/vitb16_mmc4.py:runlocal --workdir=/tmp/lcl
"""
from configs import common


def get_config(arg=None):
  runlocal = common.parse_arg(arg)
  return common.base_config("vitb16_mmc4", "B", patch_size=16, embed_dim=512,
                            runlocal=runlocal)
