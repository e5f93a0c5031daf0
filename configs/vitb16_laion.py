"""Ablation model (paper table 6): ViT-B/16 at 224 px + OPT-125M-shaped decoder on LAION-Random.

8k images per step, 25k steps, peak LR 5e-4, 2k warm-up.

  python -m lcl_jax.main --config=configs/vitb16_laion.py --workdir=gs://BUCKET/run \\
      --config.data.data_dir=gs://BUCKET/tfds --config.data.tokenizer=gs://BUCKET/spm32k.model
  python -m lcl_jax.main --config=configs/vitb16_laion.py:runlocal --workdir=/tmp/lcl
"""
from configs import common


def get_config(arg=None):
  runlocal = common.parse_arg(arg)
  return common.base_config(
      "vitb16_laion", "B", patch_size=16, embed_dim=512, runlocal=runlocal,
      sources={"lcl_laion": 1.0}, peak_lr=5e-4, total_steps=25_000, warmup_steps=2_000,
      rows_per_batch=1152, images_per_batch=8192)
