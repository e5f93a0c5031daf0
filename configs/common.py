"""Pieces shared by every config: model sizes, special tokens, sharding rules.

Imports ml_collections only, so configs load without jax or tensorflow.
"""
import ml_collections

from data_pipelines.demo import VOCAB_SIZE as DEMO_VOCAB_SIZE
from data_pipelines.tokenizer import SPECIAL_TOKENS

# ViT sizes: width, depth, heads, MLP width (Dosovitskiy et al.; Zhai et al. for S).
VIT_SIZES = {
    "Ti": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "S": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
    "H": dict(width=1280, depth=32, num_heads=16, mlp_dim=5120),
}


# SentencePiece vocabulary assumed by the full-size configs (OPT-125M itself used 50272 BPE ids).
DEFAULT_VOCAB_SIZE = 32000


def parse_arg(arg):
  """'runlocal' -> True, '' -> False. Every config takes this one argument."""
  arg = (arg or "").strip()
  if arg not in ("", "runlocal"):
    raise ValueError(f"Unknown config argument {arg!r}; the only one is 'runlocal'.")
  return arg == "runlocal"


def vit_config(variant, *, patch_size, image_size, runlocal=False):
  """The ViT section. `variant` is one of VIT_SIZES; runlocal shrinks it to a CPU-sized toy."""
  c = ml_collections.ConfigDict()
  c.variant = variant                  # S / B / L / H (informational once sizes are set)
  c.update(VIT_SIZES[variant])         # width, depth, num_heads, mlp_dim
  c.patch_size = patch_size            # pixels per patch side
  c.image_size = image_size            # input side in pixels (square)
  c.drop_path_rate = 0.2               # stochastic depth at the last block, linear from 0
  c.layerscale_init = 0.1              # initial layer-scale value (None: no layer-scale)
  c.remat = False                      # rematerialise each block in the backward pass
  c.scan_layers = False                # stack the blocks under nn.scan (params gain a leading `layers` axis)
  # The authors' open_clip ViT (configs/lcl_vitb16_laion_openclip.py) sets all four the other way.
  c.class_token = False                # a learned class token (dropped from the patch latents)
  c.ln_pre = False                     # LayerNorm before the blocks
  c.patch_bias = True                  # bias of the patch embedding
  c.activation = "gelu_tanh"           # MLP: gelu_tanh, gelu (exact) or quick_gelu (lcl_jax/models/layers.py)
  if runlocal:
    c.update(width=64, depth=2, num_heads=4, mlp_dim=128)
    c.patch_size = 8
    c.image_size = 32
    c.drop_path_rate = 0.0
  return c


def decoder_config(*, runlocal=False, vocab_size=DEFAULT_VOCAB_SIZE, seq_len=2048):
  """The causal decoder: OPT-125M shape by default."""
  c = ml_collections.ConfigDict()
  c.width = 768
  c.depth = 12
  c.num_heads = 12
  c.mlp_dim = 3072
  c.vocab_size = vocab_size            # must equal the tokenizer's vocabulary size
  c.max_len = seq_len                  # learned position table length (>= data seq_len)
  c.tie_embeddings = True              # LM head shares the token embedding (as OPT)
  # The authors' CLIP-shaped text tower (configs/lcl_vitb16_laion_openclip.py): an LM head of its own, LayerNorm +
  # Linear, instead of one final LayerNorm that the LM and context heads share (needs tie_embeddings=False).
  c.lm_head_norm = False
  c.activation = "gelu_tanh"           # MLP: gelu_tanh, gelu (exact, the authors') or quick_gelu
  c.remat = False                      # rematerialise each block in the backward pass
  c.scan_layers = False                # stack the blocks under nn.scan (params gain a leading `layers` axis)
  if runlocal:
    c.update(width=64, depth=2, num_heads=4, mlp_dim=256)
  return c


def model_config(variant, *, patch_size, image_size, embed_dim, runlocal=False,
                 vocab_size=DEFAULT_VOCAB_SIZE, seq_len=2048):
  """The whole LCL model section."""
  c = ml_collections.ConfigDict()
  c.vit = vit_config(variant, patch_size=patch_size, image_size=image_size, runlocal=runlocal)
  c.decoder = decoder_config(runlocal=runlocal, vocab_size=vocab_size, seq_len=seq_len)
  c.embed_dim = 64 if runlocal else embed_dim  # D_e, width of v and t
  c.pool_heads = 4 if runlocal else c.vit.num_heads  # attention-pooling heads
  c.pool = "lcl_jax"                   # "open_clip": the authors' pool, whose value path feeds the decoder
  c.context_proj_bias = True           # the context head's projection to D_e (the authors': a bare matrix)
  c.dtype = "bfloat16"                 # compute dtype; params are always param_dtype
  c.param_dtype = "float32"
  c.logit_scale_init = 2.6592600345611572  # log(1 / 0.07), learned from there
  # Attention kernel (lcl_jax/models/attention.py): auto = TPU splash, GPU cuDNN (ViT) + Triton flash with segment
  # ids (decoder), CPU xla; or name one: xla (every platform), splash, triton, cudnn.
  c.attention = "auto"
  c.special_tokens = dict(SPECIAL_TOKENS)
  # Contrastive validity: an image needs >= 1 text token before its <boi> in its segment (docs/method.md section 4).
  # False: the authors' rule, only a <boi> with nothing but its segment's <s> before it is excluded (models/lcl.py).
  c.require_text_context = True
  return c


def loss_config(contrastive_weight=0.1, generation_weight=1.0):
  c = ml_collections.ConfigDict()
  c.contrastive_weight = contrastive_weight  # lambda; 0 switches L_con off (generation-only)
  c.generation_weight = generation_weight    # 0 switches L_gen off (contrastive-only)
  c.max_logit_scale = 4.605170249938965      # log(100): the parameter is clamped to [0, this] after each update
  # The LM head runs only on target positions, sorted to the front of each chunk and taken in blocks of this many
  # positions (logits [chunks, block, V] are the only vocabulary-sized buffer; compute ~ targets rounded up to a block).
  c.lm_block_size = 512
  return c


def sharding_config():
  """Mesh and logical-axis rules. One -1 in the mesh shape is filled with the remaining devices."""
  c = ml_collections.ConfigDict()
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.rules = [
      ("act_batch", ("data", "fsdp")),
      ("act_images", ("data", "fsdp")),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("vocab", "tensor"),
      ("act_mlp", "tensor"),
      ("act_heads", "tensor"),
      ("act_vocab", "tensor"),
  ]
  return c


# The runlocal sequence length (the demo corpus's rows).
RUNLOCAL_SEQ_LEN = 256


def data_config(sources, *, runlocal, rows_per_batch, images_per_batch, seq_len=2048):
  """Where batches come from and how big they are (global numbers; split over the data shards at start-up)."""
  c = ml_collections.ConfigDict()
  c.sources = dict(sources)            # TFDS source name -> sampling weight (lcl_laion, lcl_mmc4, lcl_obelics)
  c.data_dir = "demo" if runlocal else ""   # TFDS data_dir (local or gs://); "demo": the bundled demo corpus
  c.tokenizer = "demo" if runlocal else ""  # SentencePiece model path; "demo": the demo corpus's; "clip_bpe": CLIP's
  c.seq_len = RUNLOCAL_SEQ_LEN if runlocal else seq_len
  c.rows_per_batch = rows_per_batch    # global rows per step (row budget = this / chunks)
  c.images_per_batch = images_per_batch  # global image slots per step (image budget = this / chunks)
  c.block_docs = 512                   # documents per row-building block and resume unit (data_pipelines/row_stream.py)
  c.decode_threads = 0                 # image decode + augment threads per host (0: one per CPU core)
  c.prefetch_batches = 2               # host batches the pipeline's thread prepares ahead
  c.eval_split = "eval"                # held-out split for evaluators
  return c


def base_config(name, variant, *, patch_size, embed_dim, runlocal, sources, peak_lr, total_steps,
                warmup_steps, rows_per_batch, images_per_batch, image_size=224, contrastive_weight=0.1,
                generation_weight=1.0):
  """The full config shared by the paper's runs; `runlocal` keeps the structure at CPU size."""
  config = ml_collections.ConfigDict()
  config.name = name                   # run name (logs, exported artefacts)
  config.seed = 0                      # params, dropout and data order
  config.runlocal = runlocal           # tiny model + bundled demo corpus
  # An artefact folder (lcl_jax.export, lcl_jax.convert) whose parameters replace the fresh ones they name
  # (e.g. the vision encoder) when a run starts; the optimizer starts fresh. Ignored when the workdir resumes.
  config.init_from = ""
  config.model = model_config(
      variant, patch_size=patch_size, image_size=image_size, embed_dim=embed_dim,
      runlocal=runlocal,
      vocab_size=DEMO_VOCAB_SIZE if runlocal else DEFAULT_VOCAB_SIZE,
      seq_len=RUNLOCAL_SEQ_LEN if runlocal else 2048)
  config.loss = loss_config(contrastive_weight, generation_weight)
  config.sharding = sharding_config()
  if not runlocal:  # full size: scanned blocks keeping only their inputs for the backward pass (tools.plan)
    for tower in (config.model.vit, config.model.decoder):
      tower.remat = tower.scan_layers = True
  if runlocal:
    rows_per_batch, images_per_batch, total_steps, warmup_steps = 8, 32, 300, 30
    peak_lr = 1e-3
  config.data = data_config(sources, runlocal=runlocal, rows_per_batch=rows_per_batch,
                            images_per_batch=images_per_batch)
  # The decoder's position table follows the data's sequence length (--config.data.seq_len=N moves both).
  config.model.decoder.max_len = config.data.get_ref("seq_len")
  config.optim = optim_config(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps)
  config.ckpt = ml_collections.ConfigDict()
  config.ckpt.every_steps = 100 if runlocal else 1000  # asynchronous saves
  config.ckpt.keep = 3                 # most recent checkpoints kept
  config.ckpt.keep_every = 0 if runlocal else 10000    # also keep every this-many steps forever (0: none)
  config.ckpt.force_unlock = False     # take over the workdir's lock even if it looks held (a stale one on gs://)
  config.log_every = 10 if runlocal else 50            # metrics cadence (steps)
  config.profile = False               # capture a profiler trace early in the run
  config.evals = evals_config(runlocal)  # evaluators run every N steps (lcl_jax/evaluators)
  return config


def optim_config(*, peak_lr, total_steps, warmup_steps):
  """AdamW recipe of the paper (tables 7 and 9)."""
  c = ml_collections.ConfigDict()
  c.peak_lr = peak_lr                  # 5e-4 LAION, 3e-4 MMC4 / OBELICS / mixtures
  c.total_steps = total_steps          # optimizer steps; the cosine reaches its end here
  c.warmup_steps = warmup_steps        # linear warm-up from 0
  c.end_lr_ratio = 0.0                 # final LR as a fraction of the peak
  c.b1 = 0.9
  c.b2 = 0.95
  c.eps = 1e-8
  c.weight_decay = 0.1                 # not on biases, norms, positions, logit scale, pooling query
  # Global-norm clipping, 0: off, as in the paper (tables 7 and 9). Set 1.0 when the loss spikes: bfloat16 runs
  # at a high LR, batches far below the paper's, or a resumed run that diverges.
  c.grad_clip_norm = 0.0
  # Micro-batches per step: the same loss and gradients as the whole batch, with one micro-batch of activations
  # at a time plus one extra forward per micro-batch (gradient caching, lcl_jax/train_step.py).
  c.grad_accum_steps = 1
  c.max_consecutive_nonfinite = 10     # stop after this many skipped (non-finite) steps in a row
  return c


def evals_config(runlocal):
  """config.evals: evaluator name -> spec, run inside training every `every_steps` and by lcl_jax.evaluate.

  Keys every spec takes are listed in lcl_jax/evaluators/base.py (COMMON), each type's own in its module (DEFAULTS);
  an unknown key is an error. `dataset`: "demo" (the held-out digits), a .npz in that layout, or a TFDS name read from
  `data_dir` ("" -> config.data.data_dir); nothing is downloaded.
  """
  c = ml_collections.ConfigDict()
  if runlocal:
    every = 100  # three times in the 300-step runlocal run
    # The demo's held-out digits: 359 images never seen in training, 10 classes, one caption each.
    c.zeroshot_digits = dict(type="zero_shot", every_steps=every, dataset="demo")  # the set's own templates
    c.retrieval_digits = dict(type="retrieval", every_steps=every, dataset="demo")
    c.linear_probe_digits = dict(type="linear_probe", every_steps=every, dataset="demo",
                                 train_fraction=0.5)  # a fixed half trains the probe, the other half tests it
    c.attention_probe_digits = dict(type="attention_probe", every_steps=every, dataset="demo",
                                    train_fraction=0.5, steps=300, learning_rate=3e-3)
    c.perplexity_digits = dict(type="perplexity", every_steps=every, dataset="demo")  # held-out pairs as rows
    return c
  every = 5000
  # ImageNet-1k validation (TFDS imagenet2012 in data_dir). Its TFDS label names are WordNet ids: point
  # class_names at a file of readable names (e.g. CLIP's 1000) for meaningful prompts.
  c.zeroshot_imagenet = dict(type="zero_shot", every_steps=every, dataset="imagenet2012", split="validation",
                             data_dir="", class_names="", batch_size=1024)
  # COCO 5k test images, ~25k captions (Karpathy split of TFDS coco_captions).
  c.retrieval_coco = dict(type="retrieval", every_steps=every, dataset="coco_captions", split="test",
                          data_dir="", caption_key="captions/text", batch_size=1024)
  # Frozen transfer, fast: logistic regression on mean patch latents, 50k ImageNet train images (4x rarer).
  c.linear_probe_imagenet = dict(type="linear_probe", every_steps=4 * every, dataset="imagenet2012",
                                 split="validation", train_split="train", max_train_examples=50_000,
                                 data_dir="", batch_size=1024)
  return c
