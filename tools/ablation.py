"""The paper's loss ablation (table 6a) at demo scale: LCL vs contrastive-only vs generation-only, several seeds.

  python -m tools.ablation --workdir=/tmp/ablation [--seeds=3] [--steps=N] [--sweep] [--quick]
  python -m tools.ablation --workdir=/tmp/ablation --replot   # tables + picture from results.json

Every variant trains the model of configs/ablation_digits.py (the runlocal MMC4 model on the bundled demo digits)
with the same budget and the same seeds through lcl_jax.train.run, one sub-workdir per run
(`<workdir>/<variant>/seed_<s>`), one after the other in this process. The only difference between variants is the
two loss weights (docs/method.md section 4):
  lcl               lambda = 0.1, generation 1   (the paper's recipe)
  contrastive_only  lambda = 0.1, generation 0   (CLIP-like; with AdamW the 0.1 scale of a lone loss hardly matters)
  generation_only   lambda = 0,   generation 1   (Flamingo-like)
  lcl_lambda_<x>    lambda = x,   generation 1   (--sweep: x in 0.05, 0.2, 0.5, the paper's table 6b)
Each run is evaluated on the held-out digits by the evaluators of the config (frozen linear probe, frozen attention
probe, zero-shot classification, retrieval) during training, which gives the curves, and at its last step, which
gives the table. A seed's initial parameters are the same for every variant (config.seed seeds them, not the loss),
so they are evaluated once per seed and reported as the `init` row: the level a metric has before any training.

Writes into the workdir: results.json (every run's curves and final numbers, the tables, wall times), results.md (the
final numbers, and their gain over the same seed's untrained encoder: mean +- sample standard deviation over seeds)
and ablation.png (curves and bar charts), and prints the tables.
A run whose sub-workdir already holds its last checkpoint is not trained again (train.run resumes it), so an
interrupted study continues where it stopped.
"""
import dataclasses
import glob
import json
import math
import os
import time

from absl import app, flags, logging
import numpy as np

from configs import ablation_digits


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  label: str
  contrastive_weight: float
  generation_weight: float


VARIANTS = (
    Variant("lcl", "LCL (lambda 0.1)", 0.1, 1.0),
    Variant("contrastive_only", "contrastive-only", 0.1, 0.0),
    Variant("generation_only", "generation-only", 0.0, 1.0),
)
SWEEP_LAMBDAS = (0.05, 0.2, 0.5)  # with the LCL variant's 0.1, the four weights of the paper's table 6b


def sweep_variants():
  return tuple(Variant(f"lcl_lambda_{lam:g}", f"LCL (lambda {lam:g})", lam, 1.0) for lam in SWEEP_LAMBDAS)


@dataclasses.dataclass(frozen=True)
class Metric:
  key: str          # name in results.json and results.md
  evaluator: str    # config.evals entry (configs/ablation_digits.py)
  scalar: str       # the evaluator's scalar
  label: str
  short: str        # axis tick in the picture


METRICS = (
    Metric("linear_probe", "linear_probe_digits", "top1", "linear probe top-1", "linear probe"),
    Metric("attention_probe", "attention_probe_digits", "top1", "attention probe top-1", "attn. probe"),
    Metric("zero_shot", "zeroshot_digits", "top1", "zero-shot top-1", "zero-shot"),
    Metric("tr1", "retrieval_digits", "i2t_r1", "TR@1 (image->text)", "TR@1"),
    Metric("ir1", "retrieval_digits", "t2i_r1", "IR@1 (text->image)", "IR@1"),
)
CURVE_METRICS = ("linear_probe", "attention_probe", "zero_shot")  # the panels of the picture's top row
# The training loop's own scalars (TensorBoard): is the contrastive term learning, against chance at its batch?
TRAIN_SCALARS = ("contrastive_loss", "contrastive_acc_i2t", "contrastive_acc_t2i", "num_valid_images")
END_POINTS = 5  # logged steps averaged for the "at the end" numbers (one step's accuracy is noisy)
INIT = "init"  # the table row of the untrained model

# The paper's table 6a (COCO, frozen transfer, ViT-B/16 on MMC4): TR@1, IR@1, B@4, CIDEr per loss.
PAPER_TABLE_6A = {
    "lcl": dict(tr1=48.5, ir1=34.5, b4=24.4, cider=87.5),
    "contrastive_only": dict(tr1=46.4, ir1=32.7, b4=23.8, cider=82.7),
    "generation_only": dict(tr1=10.3, ir1=5.4, b4=8.5, cider=17.8),
}


# ---------------------------------------------------------------------------------------------------- configs


def base_config(quick: bool, steps=None):
  """configs/ablation_digits.py, with the step count (and the eval cadence that follows it) overridden."""
  config = ablation_digits.get_config("quick" if quick else "")
  if steps:
    points = 1 if quick else ablation_digits.EVAL_POINTS
    config.optim.total_steps = steps
    config.optim.warmup_steps = max(1, min(config.optim.warmup_steps, steps // 10))
    config.ckpt.every_steps = steps
    config.log_every = max(1, steps // ablation_digits.LOG_POINTS)
    for spec in config.evals.values():
      spec.every_steps = max(1, steps // points)
  return config


def run_config(base, variant: Variant, seed: int):
  config = base.copy_and_resolve_references()
  config.name = f"{base.name}_{variant.name}"
  config.seed = seed
  config.loss.contrastive_weight = variant.contrastive_weight
  config.loss.generation_weight = variant.generation_weight
  return config


# ---------------------------------------------------------------------------------------------------- running


def read_evals(workdir: str) -> dict:
  """<workdir>/eval/step_*/<evaluator>.json -> {metric key: {step: value}}."""
  curves = {m.key: {} for m in METRICS}
  root = os.path.join(workdir, "eval")
  if not os.path.isdir(root):
    return curves
  for folder in sorted(os.listdir(root)):
    if not folder.startswith("step_"):
      continue
    step = int(folder[len("step_"):])
    for m in METRICS:
      path = os.path.join(root, folder, f"{m.evaluator}.json")
      if os.path.exists(path):
        with open(path) as f:
          curves[m.key][step] = float(json.load(f)[m.scalar])
  return curves


def read_train_scalars(workdir: str) -> dict:
  """The run's TensorBoard scalars of TRAIN_SCALARS -> {tag: [[step, value], ...]} (a resumed run's files too)."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel
  out = {tag: {} for tag in TRAIN_SCALARS}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    for tag in set(TRAIN_SCALARS) & set(acc.Tags()["tensors"]):
      for e in acc.Tensors(tag):
        out[tag][e.step] = float(tensor_util.make_ndarray(e.tensor_proto))  # scalars come packed in tensor_content
  return {tag: sorted(values.items()) for tag, values in out.items()}


def contrastive_at_end(train: dict) -> dict:
  """Mean over the last END_POINTS logged steps: valid pairs per step, the contrastive loss and accuracy (both
  directions averaged), and chance for each at that batch (ln n and 1 / n for n valid pairs)."""
  last = lambda tag: np.array([v for _, v in train[tag][-END_POINTS:]])
  pairs = last("num_valid_images")
  return dict(valid_pairs=float(pairs.mean()), valid_pairs_min=float(min(v for _, v in train["num_valid_images"])),
              loss=float(last("contrastive_loss").mean()), chance_loss=float(np.log(pairs).mean()),
              acc=float(((last("contrastive_acc_i2t") + last("contrastive_acc_t2i")) / 2).mean()),
              chance_acc=float((1 / pairs).mean()))


def evaluate_init(config, workdir: str) -> dict:
  """Evaluates the initial parameters of `config.seed` (what every variant starts from) -> {metric: value}."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from lcl_jax import evaluators, sharding, state as state_lib  # pylint: disable=import-outside-toplevel
  curves = read_evals(workdir)
  if all(0 in c for c in curves.values()):
    return {k: c[0] for k, c in curves.items()}
  mesh = sharding.make_mesh(config.sharding.mesh)
  spec = state_lib.state_spec(config, mesh)
  # The same jitted init as train.run, so these are exactly the parameters its step 0 holds.
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
    state = jax.jit(lambda: nn.unbox(spec.init_fn()), out_shardings=spec.shardings)()
  evals = evaluators.from_config(config, model=spec.model, mesh=mesh)
  evaluators.run_due(evals, state.params, 0, workdir=workdir, force=True)
  return {k: c[0] for k, c in read_evals(workdir).items()}


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (or resumes) one run -> {metric: {step: value}}, the last step always evaluated."""
  from lcl_jax import evaluate, train  # pylint: disable=import-outside-toplevel
  train.run(config, workdir)
  curves = read_evals(workdir)
  last = config.optim.total_steps
  if any(last not in c for c in curves.values()):
    # The cadence does not divide the step count, or the run had finished before this call: evaluate the last
    # checkpoint the way lcl_jax.evaluate does, which writes the same files.
    evaluate.evaluate(config, workdir, step=last)
    curves = read_evals(workdir)
  return curves


def run_study(workdir: str, *, seeds: int, quick: bool, steps=None, sweep: bool = False) -> dict:
  base = base_config(quick, steps)
  variants = VARIANTS + (sweep_variants() if sweep else ())
  start = time.perf_counter()
  init, runs = {}, []
  for seed in range(seeds):
    t = time.perf_counter()
    init[seed] = evaluate_init(run_config(base, VARIANTS[0], seed), os.path.join(workdir, INIT, f"seed_{seed}"))
    logging.info("init seed %d: %s (%.0f s)", seed, init[seed], time.perf_counter() - t)
  for variant in variants:
    for seed in range(seeds):
      t = time.perf_counter()
      curves = train_and_evaluate(run_config(base, variant, seed), os.path.join(workdir, variant.name,
                                                                                 f"seed_{seed}"))
      for key, value in init[seed].items():
        curves[key].setdefault(0, value)
      last = base.optim.total_steps
      train = read_train_scalars(os.path.join(workdir, variant.name, f"seed_{seed}"))
      run = dict(variant=variant.name, seed=seed, wall_s=round(time.perf_counter() - t, 1),
                 final={k: c[last] for k, c in curves.items()},
                 curves={k: sorted(c.items()) for k, c in curves.items()},
                 train=train, contrastive=contrastive_at_end(train))
      logging.info("%s seed %d: %s (%.0f s)", variant.name, seed, run["final"], run["wall_s"])
      runs.append(run)
  import jax  # pylint: disable=import-outside-toplevel
  return summarize(dict(
      budget=budget(base, seeds, quick, sweep),
      devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}", cpu_cores=_cores(),
      variants=[dataclasses.asdict(v) for v in variants],
      metrics=[dataclasses.asdict(m) for m in METRICS],
      init={str(s): v for s, v in init.items()},
      runs=runs,
      paper_table_6a=PAPER_TABLE_6A,
      wall_s=round(time.perf_counter() - start, 1)))


def budget(config, seeds, quick, sweep) -> dict:
  m = config.model
  return dict(
      quick=quick, seeds=seeds, sweep=sweep, steps=config.optim.total_steps, warmup_steps=config.optim.warmup_steps,
      peak_lr=config.optim.peak_lr, grad_accum_steps=config.optim.grad_accum_steps,
      rows_per_batch=config.data.rows_per_batch,
      images_per_batch=config.data.images_per_batch, seq_len=config.data.seq_len, dtype=m.dtype,
      vit=f"{m.vit.width} wide x {m.vit.depth} layers, patch {m.vit.patch_size} on {m.vit.image_size} px",
      decoder=f"{m.decoder.width} wide x {m.decoder.depth} layers, vocab {m.decoder.vocab_size}",
      eval_every_steps=int(next(iter(config.evals.values())).every_steps))


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------------- the table


def mean_std(values) -> dict:
  """Sample standard deviation (ddof 1): with 3 seeds the population one would understate the spread."""
  values = np.asarray(values, np.float64)
  std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
  return dict(mean=float(values.mean()), std=std, n=len(values), values=[float(v) for v in values])


def summarize(results: dict) -> dict:
  """Adds the tables to `results` (in place, and returns it): `table`, each variant's final numbers, and `gain`,
  each run minus its own seed's untrained encoder. Every variant of a seed starts from the same parameters, so the
  paired gain is free of the spread between initialisations, which is about as large as the effects here."""
  init = {int(s): v for s, v in results["init"].items()}
  keys = [m["key"] for m in results["metrics"]]
  results["table"] = {INIT: {k: mean_std([init[s][k] for s in sorted(init)]) for k in keys}}
  results["gain"] = {}
  for v in results["variants"]:
    mine = [r for r in results["runs"] if r["variant"] == v["name"]]
    results["table"][v["name"]] = {k: mean_std([r["final"][k] for r in mine]) for k in keys}
    results["gain"][v["name"]] = {k: mean_std([r["final"][k] - init[r["seed"]][k] for r in mine]) for k in keys}
    if all("contrastive" in r for r in mine):
      results.setdefault("contrastive", {})[v["name"]] = {
          k: mean_std([r["contrastive"][k] for r in mine]) for k in mine[0]["contrastive"]}
  return results


def markdown(results: dict) -> str:
  labels = {v["name"]: v["label"] for v in results["variants"]}
  labels[INIT] = "untrained (init)"
  metrics = results["metrics"]
  head = "| variant | " + " | ".join(m["label"] for m in metrics) + " |\n|" + " --- |" * (len(metrics) + 1)

  def rows(tab, sign):
    for name, row in tab.items():
      cells = [f"{100 * row[m['key']]['mean']:{sign}.1f} ± {100 * row[m['key']]['std']:.1f}" for m in metrics]
      yield "| " + " | ".join([labels[name]] + cells) + " |"

  b = results["budget"]
  n = results["table"][INIT][metrics[0]["key"]]["n"]
  seeds = f"{n} seed{'s' if n > 1 else ''}"
  contrastive = []
  if results.get("contrastive"):
    cell = lambda c, key, f: f"{f(c[key]['mean'])} ± {f(c[key]['std'])}"
    contrastive = [
        f"The contrastive term at the end of training (mean of the last {END_POINTS} logged steps; mean ± std over "
        f"{seeds}; chance: ln n and 1 / n for n valid pairs):", "",
        "| variant | valid pairs / step (fewest) | contrastive loss | chance loss | accuracy (i2t, t2i mean) | "
        "chance accuracy |", "|" + " --- |" * 6]
    for name, c in results["contrastive"].items():
      contrastive.append(
          f"| {labels[name]} | {c['valid_pairs']['mean']:.0f} ({min(c['valid_pairs_min']['values']):.0f}) | "
          f"{cell(c, 'loss', lambda x: f'{x:.2f}')} | {c['chance_loss']['mean']:.2f} | "
          f"{cell(c, 'acc', lambda x: f'{100 * x:.1f}%')} | {100 * c['chance_acc']['mean']:.1f}% |")
    contrastive.append("")
  return "\n".join([
      head, *rows(results["table"], ""), "",
      f"Held-out demo digits (359 images, 10 classes; chance 10%), in %: mean ± sample std over {seeds}, after "
      f"{b['steps']} steps (ViT {b['vit']}; decoder {b['decoder']}; {b['rows_per_batch']} rows / "
      f"{b['images_per_batch']} image slots per step in {b.get('grad_accum_steps', 1)} micro-batches; peak LR "
      f"{b['peak_lr']:g}). Probes train on a fixed half of the "
      f"set and test on the other half.", "",
      "Gain over the same seed's untrained encoder (paired), in points:", "",
      head, *rows(results["gain"], "+"), "", *contrastive])


# ---------------------------------------------------------------------------------------------------- the picture

_COLORS = {INIT: "0.55", "lcl": "tab:blue", "contrastive_only": "tab:orange", "generation_only": "tab:green"}
_SWEEP_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive")


def _top(values) -> float:
  """A y-axis top a little above the highest bar or band, in steps of 0.1 (the effects here are a few points)."""
  return min(1.0, math.ceil((max(values) + 0.05) * 10) / 10)


def plot(results: dict, path: str) -> None:
  """Top row: the curves of CURVE_METRICS (mean over seeds, band +- std). Bottom: the final numbers (left) and the
  paired gain over each seed's untrained encoder (right), mean +- std over seeds."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")  # files only: no display on CI or servers
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  variants = [v["name"] for v in results["variants"]]
  labels = {v["name"]: v["label"] for v in results["variants"]}
  labels[INIT] = "untrained (init)"
  sweep = iter(_SWEEP_COLORS)
  colors = {name: _COLORS.get(name) or next(sweep) for name in variants}
  colors[INIT] = _COLORS[INIT]
  metrics = {m["key"]: m for m in results["metrics"]}
  n = results["table"][INIT][CURVE_METRICS[0]]["n"]

  train_rows = all("train" in r for r in results["runs"])
  fig = plt.figure(figsize=(14, 13 if train_rows else 9), constrained_layout=True)
  grid = fig.add_gridspec(3 if train_rows else 2, len(CURVE_METRICS))
  for col, key in enumerate(CURVE_METRICS):
    ax = fig.add_subplot(grid[0, col])
    tops = [0.2]
    for name in variants:
      runs = [r for r in results["runs"] if r["variant"] == name]
      steps = [s for s, _ in runs[0]["curves"][key]]
      values = np.array([[v for _, v in r["curves"][key]] for r in runs])  # [seeds, points]
      mean = values.mean(axis=0)
      std = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
      ax.plot(steps, mean, marker="o", ms=3, color=colors[name], label=labels[name])
      ax.fill_between(steps, mean - std, mean + std, color=colors[name], alpha=0.18, linewidth=0)
      tops.append(float((mean + std).max()))
    ax.axhline(0.1, color="0.3", linestyle=":", linewidth=1, label="chance (10 classes)")
    ax.set_title(metrics[key]["label"])
    ax.set_xlabel("training step (0: the shared initialisation)")
    ax.set_ylim(0, _top(tops))
    ax.grid(alpha=0.3)
    if col == 0:
      ax.set_ylabel(f"held-out digits (mean ± std, {n} seed{'s' if n > 1 else ''})")
      ax.legend(fontsize=8, loc="lower right")

  keys = list(metrics)
  x = np.arange(len(keys))
  for panel, (tab, rows) in enumerate(((results["table"], [INIT] + variants), (results["gain"], variants))):
    ax = fig.add_subplot(grid[1, :-1] if panel == 0 else grid[1, -1])
    width = 0.8 / len(rows)
    tops = [0.1]
    for i, name in enumerate(rows):
      means = np.array([tab[name][k]["mean"] for k in keys])
      stds = np.array([tab[name][k]["std"] for k in keys])
      ax.bar(x + (i - (len(rows) - 1) / 2) * width, means, width, yerr=stds, capsize=2, color=colors[name],
             label=labels[name])
      tops.append(float((means + stds).max()))
    ax.set_xticks(x, [metrics[k]["short"] for k in keys], fontsize=8 if panel else 10)
    ax.grid(axis="y", alpha=0.3)
    if panel == 0:
      ax.set_ylim(0, _top(tops))
      ax.set_title(f"final numbers after {results['budget']['steps']} steps")
      ax.set_ylabel("top-1 / recall@1")
      ax.legend(fontsize=8, ncol=len(rows), loc="upper right")
    else:
      ax.axhline(0, color="0.2", linewidth=0.8)
      ax.set_title("gain over the same seed's init")
  if train_rows:
    _plot_contrastive(fig, grid, results, variants, labels, colors)
  fig.suptitle(f"Loss ablation on the demo digits (paper table 6a at toy scale): {results['budget']['steps']} "
               f"steps, {n} seed{'s' if n > 1 else ''}")
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _train_curve(runs, tag):
  """(steps, mean over runs, std over runs) of a training scalar; steps are those every run logged."""
  steps = sorted(set.intersection(*[{s for s, _ in r["train"][tag]} for r in runs]))
  values = np.array([[dict(r["train"][tag])[s] for s in steps] for r in runs])
  return np.array(steps), values.mean(axis=0), values.std(axis=0, ddof=1) if len(runs) > 1 else 0 * values[0]


def _plot_contrastive(fig, grid, results, variants, labels, colors):
  """Bottom row: the contrastive loss and accuracy during training against chance at the step's valid pairs, and
  the valid pairs per step."""
  panels = [fig.add_subplot(grid[2, i]) for i in range(3)]
  everyone = results["runs"]
  steps, pairs, _ = _train_curve(everyone, "num_valid_images")
  for name in variants:
    runs = [r for r in everyone if r["variant"] == name]
    for ax, tags in ((panels[0], ("contrastive_loss",)), (panels[1], ("contrastive_acc_i2t", "contrastive_acc_t2i"))):
      curves = [_train_curve(runs, tag) for tag in tags]
      x, mean = curves[0][0], np.mean([c[1] for c in curves], axis=0)
      std = np.mean([c[2] for c in curves], axis=0)
      ax.plot(x, mean, color=colors[name], label=labels[name])
      ax.fill_between(x, mean - std, mean + std, color=colors[name], alpha=0.18, linewidth=0)
    x, n, _ = _train_curve(runs, "num_valid_images")
    panels[2].plot(x, n, color=colors[name], label=labels[name])
  panels[0].plot(steps, np.log(pairs), color="0.3", linestyle=":", label="chance (ln n)")
  panels[1].plot(steps, 1 / pairs, color="0.3", linestyle=":", label="chance (1 / n)")
  panels[1].set_ylim(0, None)
  panels[2].set_ylim(0, None)
  for ax, title in zip(panels, ("contrastive loss (training batch)", "contrastive accuracy, i2t and t2i mean",
                                "valid image / context pairs per step (n)")):
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
  panels[0].legend(fontsize=8)


# ---------------------------------------------------------------------------------------------------- entry point


def write(results: dict, workdir: str) -> dict:
  """results.json, results.md and ablation.png in `workdir` -> their paths."""
  os.makedirs(workdir, exist_ok=True)
  paths = dict(json=os.path.join(workdir, "results.json"), markdown=os.path.join(workdir, "results.md"),
               png=os.path.join(workdir, "ablation.png"))
  with open(paths["json"], "w") as f:
    json.dump(results, f, indent=2)
  with open(paths["markdown"], "w") as f:
    f.write(markdown(results))
  plot(results, paths["png"])
  return paths


def use_compilation_cache(workdir: str) -> None:
  """Seeds of a variant compile the same train step, and all runs the same evaluator programs: a persistent cache
  in the workdir compiles each once (an existing JAX_COMPILATION_CACHE_DIR is kept)."""
  import jax  # pylint: disable=import-outside-toplevel
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], "GPU")  # TensorFlow only prepares evaluation images: accelerators are JAX's
  workdir = _WORKDIR.value
  if _REPLOT.value:
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)
    # Labels are code, not measurements: a file written before a label changed gets today's.
    results["metrics"] = [dataclasses.asdict(m) for m in METRICS]
    results = summarize(results)
  else:
    use_compilation_cache(workdir)
    seeds = 1 if _QUICK.value else _SEEDS.value
    results = run_study(workdir, seeds=seeds, quick=_QUICK.value, steps=_STEPS.value, sweep=_SWEEP.value)
  paths = write(results, workdir)
  print(json.dumps(dict(table=results["table"], gain=results["gain"], wall_s=results["wall_s"], files=paths),
                   indent=2))
  print(markdown(results))
  print(f"Study wall time {results['wall_s']:.0f} s ({math.ceil(results['wall_s'] / 60)} min).")


if __name__ == "__main__":
  # Flags exist only when this module runs as the program: importing it (tests) must not claim flag names.
  _WORKDIR = flags.DEFINE_string("workdir", None, "Where runs, results.json, results.md and ablation.png go.")
  _SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per variant (0, 1, ...); --quick uses one.")
  _STEPS = flags.DEFINE_integer("steps", None, "Training steps per run (default: configs/ablation_digits.py's).")
  _QUICK = flags.DEFINE_boolean("quick", False, "The CI smoke version: a few steps, one seed.")
  _SWEEP = flags.DEFINE_boolean("sweep", False, "Also train LCL at lambda 0.05, 0.2 and 0.5 (table 6b).")
  _REPLOT = flags.DEFINE_boolean("replot", False, "Only rewrite the tables and the picture from the workdir's "
                                 "results.json (after a change to them), training nothing.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
