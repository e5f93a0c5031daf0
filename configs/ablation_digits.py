"""The loss ablation of the paper's table 6a at demo scale: the runlocal MMC4 model on the bundled demo digits, with
the budget of the study that tools/ablation.py runs (LCL, contrastive-only, generation-only x seeds).

  python -m tools.ablation --workdir=/tmp/ablation          # the whole study
  python -m lcl_jax.main --config=configs/ablation_digits.py --workdir=/tmp/one_lcl_run
  python -m lcl_jax.main --config=configs/ablation_digits.py:quick --workdir=/tmp/smoke

Why this budget and not plain `vitb16_mmc4.py:runlocal` (ViT 64 x 2; 8 rows of 256 tokens, 32 image slots, 300 steps
in bfloat16): the contrastive loss needs negatives, and 8 demo rows hold about 22 valid image / context pairs, at
which the contrastive term barely moves off chance (ln 22 = 3.1). What the study changes, and why:
  - 64 rows / 192 image slots per step: every step holds at least 128 valid pairs (measured 165-183 on the demo
    documents, about 2.8 per row). The image slots are a row's 3 on average, so few are empty (the ViT runs on
    every slot).
  - 120 steps (about 21 passes over the demo's 359 training documents) at peak LR 2e-3, 12 warm-up steps, cosine to
    0. The batch is 8x the runlocal one at about the same number of passes as the study's earlier 600 x 8-row
    budget had (13), so the step count falls and the LR rises (about the square root of 8 over runlocal's 1e-3,
    rounded down: at 3e-3 an earlier pilot memorised the corpus).
  - ViT 128 wide x 4 layers (runlocal: 64 x 2): the encoder is what the ablation measures; it is a small part of the
    step on CPU.
  - float32 compute: on CPUs bfloat16 matmuls are emulated and the step is ~1.6x slower.
  - Unchanged: decoder 64 x 2, rows of 256 tokens, the corpus, the evaluators.
`quick` is the CI smoke version: the same code path for a few steps, evaluated once at the end, with the runlocal
ViT (64 x 2: a quarter of the compile and attention-probe time) and a 10-step attention probe.
"""
import ml_collections

from configs import vitb16_mmc4

# The study's budget (the module docstring says why; docs/ablation.md has the measured table).
STEPS = 120
WARMUP_STEPS = 12
PEAK_LR = 2e-3
ROWS_PER_BATCH = 64
IMAGES_PER_BATCH = 192
VIT = dict(width=128, depth=4, num_heads=4, mlp_dim=512)
EVAL_POINTS = 3           # evaluations per run (plus the shared one at initialisation): the curves' points
LOG_POINTS = 40           # logged training steps per run: the contrastive curves' points
QUICK_STEPS = 2


def evals_config(every_steps: int) -> ml_collections.ConfigDict:
  """The held-out digits only: the two frozen probes (the paper's frozen-transfer setting), zero-shot classification,
  and retrieval (the demo's analogue of table 6a's COCO TR@1 / IR@1). Perplexity is left out: contrastive-only has
  no generative head to score, and it is not part of table 6a."""
  c = ml_collections.ConfigDict()
  c.zeroshot_digits = dict(type="zero_shot", every_steps=every_steps, dataset="demo")
  c.retrieval_digits = dict(type="retrieval", every_steps=every_steps, dataset="demo")
  c.linear_probe_digits = dict(type="linear_probe", every_steps=every_steps, dataset="demo", train_fraction=0.5)
  c.attention_probe_digits = dict(type="attention_probe", every_steps=every_steps, dataset="demo",
                                  train_fraction=0.5, steps=300, learning_rate=3e-3)
  return c


def get_config(arg=None):
  arg = (arg or "").strip()
  if arg not in ("", "quick", "runlocal"):
    raise ValueError(f"Unknown config argument {arg!r}; use 'quick' (CI smoke) or 'runlocal' (the same as no "
                     "argument: this study is already demo-sized).")
  quick = arg == "quick"
  config = vitb16_mmc4.get_config("runlocal")
  config.name = "ablation_digits"
  config.model.dtype = "float32"
  if not quick:
    config.model.vit.update(VIT)
  steps = QUICK_STEPS if quick else STEPS
  config.optim.total_steps = steps
  config.optim.warmup_steps = max(1, steps // 10) if quick else WARMUP_STEPS
  config.optim.peak_lr = PEAK_LR
  config.data.update(rows_per_batch=ROWS_PER_BATCH, images_per_batch=IMAGES_PER_BATCH)
  # One checkpoint, at the end: saves are pure overhead here, and the last one is what lcl_jax.evaluate reads.
  config.ckpt.every_steps = steps
  config.ckpt.keep = 1
  config.log_every = max(1, steps // LOG_POINTS)
  config.evals = evals_config(every_steps=steps if quick else steps // EVAL_POINTS)
  if quick:  # a smoke test of the code path: the attention probe's own training need not converge
    config.evals.attention_probe_digits.steps = 10
  return config
