"""Ablation model (paper table 6): ViT-B/16 at 224 px + OPT-125M-shaped decoder on MMC4.

8k images per step, 25k steps, peak LR 3e-4, 2k warm-up. The loss weights select the ablation:
  --config.loss.generation_weight=0   contrastive-only (CLIP-like)
  --config.loss.contrastive_weight=0  generation-only (Flamingo-like)

  python -m lcl_jax.main --config=configs/vitb16_mmc4.py --workdir=gs://BUCKET/run \\
      --config.data.data_dir=gs://BUCKET/tfds --config.data.tokenizer=gs://BUCKET/spm32k.model
  python -m lcl_jax.main --config=configs/vitb16_mmc4.py:runlocal --workdir=/tmp/lcl
"""
from configs import common


def get_config(arg=None):
  runlocal = common.parse_arg(arg)
  return common.base_config(
      "vitb16_mmc4", "B", patch_size=16, embed_dim=512, runlocal=runlocal,
      sources={"lcl_mmc4": 1.0}, peak_lr=3e-4, total_steps=25_000, warmup_steps=2_000,
      rows_per_batch=2048, images_per_batch=8192)
