"""The paper's main model: ViT-L/14 at 224 px + OPT-125M-shaped decoder, L = 2048, LAION + MMC4.

64k images per step on average (12288 rows, 65536 image slots), 200k steps, peak LR 3e-4, 2k warm-up.

  python -m lcl_jax.main --config=configs/vitl14_laion_mmc4.py --workdir=gs://BUCKET/run \\
      --config.data.data_dir=gs://BUCKET/tfds --config.data.tokenizer=gs://BUCKET/spm32k.model
  python -m lcl_jax.main --config=configs/vitl14_laion_mmc4.py:runlocal --workdir=/tmp/lcl
"""
from configs import common


def get_config(arg=None):
  runlocal = common.parse_arg(arg)
  return common.base_config(
      "vitl14_laion_mmc4", "L", patch_size=14, embed_dim=768, runlocal=runlocal,
      sources={"lcl_laion": 0.5, "lcl_mmc4": 0.5}, peak_lr=3e-4, total_steps=200_000, warmup_steps=2_000,
      rows_per_batch=12288, images_per_batch=65536)
