"""The authors' released model, LCL_ViT-B-16_laion (their open_clip config), in lcl_jax's layout, tensor for tensor.

Vision: ViT-B/16 at 224 px, 768 wide, 12 layers, 12 heads, MLP 3072, with a class token, `ln_pre`, a bias-free
patch embedding, exact GELU and no layer-scale; their attentive pool and projection at 768 (model.pool =
"open_clip"), whose value path feeds the decoder. Text: their CLIP-shaped causal tower, 768 wide, 12 layers,
context 280, CLIP's BPE vocabulary of 49408 plus their three image markers (49411 ids, data.tokenizer =
"clip_bpe" and their special ids), exact GELU, an LM head of its own (LayerNorm + Linear) and a bias-free
text projection after `ln_final` for the contrastive context vector. Data as their LAION run: one image-text
pair per 280-token row (196 latents per image), 8k pairs per step, LR 5e-4, 2k warm-up.

  python -m lcl_jax.convert --from=open_clip --checkpoint=lcl_vitb16_laion.pt --output=/tmp/lcl_vitb16
  python -m lcl_jax.main --config=configs/lcl_vitb16_laion_openclip.py --config.init_from=/tmp/lcl_vitb16 ...
  python -m lcl_jax.main --config=configs/lcl_vitb16_laion_openclip.py:runlocal --workdir=/tmp/lcl
"""
from configs import common
from data_pipelines.clip_tokenizer import SPECIAL_TOKENS as CLIP_SPECIAL_TOKENS, VOCAB_SIZE as CLIP_VOCAB_SIZE

CONTEXT_LENGTH = 280  # their text_cfg.context_length: the position table and the row length


def get_config(arg=None):
  runlocal = common.parse_arg(arg)
  config = common.base_config(
      "lcl_vitb16_laion_openclip", "B", patch_size=16, embed_dim=768, runlocal=runlocal,
      sources={"lcl_laion": 1.0}, peak_lr=5e-4, total_steps=25_000, warmup_steps=2_000,
      rows_per_batch=8192, images_per_batch=8192)
  m = config.model
  m.vit.update(class_token=True, ln_pre=True, patch_bias=False, activation="gelu", layerscale_init=None,
               drop_path_rate=0.0)
  m.pool = "open_clip"
  m.pool_heads = m.vit.num_heads
  # Their pool keeps the ViT's width and feeds the decoder directly: embed_dim = ViT width = decoder width.
  m.embed_dim = m.vit.width
  m.decoder.update(width=m.vit.width, num_heads=m.vit.num_heads, mlp_dim=4 * m.vit.width,
                   vocab_size=CLIP_VOCAB_SIZE, tie_embeddings=False, lm_head_norm=True, activation="gelu")
  m.context_proj_bias = False
  m.special_tokens = dict(CLIP_SPECIAL_TOKENS)
  # Their contrastive rule: only a <boi> that opens its row (the image-first pair) has no context.
  m.require_text_context = False
  config.data.tokenizer = "clip_bpe"
  if not runlocal:
    config.data.seq_len = CONTEXT_LENGTH
  return config
