"""The paper's main model: ViT-L/14 at 224 px + OPT-125M-shaped decoder, L = 2048, LAION + MMC4.

  python -m lcl_jax.main --config=configs/vitl14_laion_mmc4.py --workdir=gs://BUCKET/run
  python -m lcl_jax.main --config=configs/vitl14_laion_mmc4.py:runlocal --workdir=/tmp/lcl
"""
from configs import common


def get_config(arg=None):
  runlocal = common.parse_arg(arg)
  return common.base_config("vitl14_laion_mmc4", "L", patch_size=14, embed_dim=768,
                            runlocal=runlocal)
