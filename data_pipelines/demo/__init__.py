"""The bundled demo corpus: real handwritten digits in MMC4 and LAION raw formats, built like real data.

    python -m data_pipelines.demo [--cache_dir=DIR]     # builds once (well under a minute), prints the reports

The digits are scikit-learn's bundled `load_digits` (1797 scans, 8x8, 16 grey levels; no download), upscaled to 32x32
and inked in a few colours (runlocal ViT: image_size 32, patch 8, so K = 16 patches per image). A stratified 20% of
every class is held out for evaluation and never appears in a training document. The rest is written as the raw files
users hold (docs/formats.md): MMC4 jsonl shards (some zipped) with an image folder, and img2dataset-style LAION
webdataset tars, with a little of the usual dirt (failed downloads, a broken JSON line, samples missing their caption or
image, grayscale PNGs). Then the SAME readers and build step as real data (data_pipelines.build) write TFDS documents,
and the demo tokenizer is trained on the training text.

Layout of `<cache_dir>/demo_v1/` (cache_dir: --cache_dir, else $LCL_DEMO_DIR, else ~/.cache/lcl_jax):
  raw/mmc4/docs_shard_{0,2}_v2.jsonl.zip, raw/mmc4/docs_shard_1_v2.jsonl    MMC4 shards
  raw/mmc4_images/<sha1>.jpg|png                                           their images
  raw/laion/0000{0,1}.tar (+ .parquet, _stats.json)                        LAION pairs
  tfds/                                          TFDS data_dir (data_pipelines.build.load_documents reads it)
  tokenizer/demo.model                           SentencePiece, vocab VOCAB_SIZE
  eval/digits_eval.npz                           held-out split: images uint8 [N,32,32,3], labels int32 [N],
                                                 captions [N], class_names [10], templates, digit_index [N], ink [N]
  reports/{mmc4,laion}.json                      build reports (also in tfds/lcl_*/build_report.json)
  manifest.json                                  what was generated (counts, dirt written on purpose); written last

The folder is built under a temporary name next to it and renamed into place in one step, so a crash or a second
process never leaves (or sees) half a corpus. `demo_v1` changes whenever the corpus format does, forcing a rebuild.
"""
import dataclasses
import json
import os
import shutil
import tempfile
import time

import numpy as np

from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines.demo import docs as demo_docs
from data_pipelines.demo import files as demo_files

VERSION = "demo_v1"
VOCAB_SIZE = 512  # its SentencePiece tokenizer (configs: DEMO_VOCAB_SIZE)
SEED = 1797
PATCHES_PER_IMAGE = (demo_files.IMAGE_SIZE // 8) ** 2  # runlocal ViT: patch 8 on 32x32 -> K = 16
N_MMC4_DOCS = 360
N_LAION_PAIRS = 1000
_BUILD_WORKERS = 4  # image-validation threads in the build; the output does not depend on them
_STALE_TMP_S = 3600


@dataclasses.dataclass
class DemoPaths:
  root: str
  data_dir: str               # TFDS data_dir holding lcl_mmc4 and lcl_laion (data_pipelines.build.load_documents)
  tokenizer_path: str
  eval_path: str              # .npz, fields in the module docstring
  mmc4_dir: str               # raw shards, as a user would hold them
  mmc4_images_dir: str
  laion_dir: str
  reports: dict               # source -> build report
  manifest: dict              # what was generated: counts, dirt written on purpose, seed


def streams(seed=SEED):
  """Independent generators per purpose, so changing one part of the corpus does not reshuffle the others."""
  names = ("split", "render", "documents", "laion", "files")
  return dict(zip(names, (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(names)))))


def load_digits(seed=SEED) -> demo_files.Digits:
  """The rendered digits and the held-out split exactly as the corpus uses them (tests compare pixels with it)."""
  rngs = streams(seed)
  return demo_files.load_digits(rngs["split"], rngs["render"])


def _generate(root):
  """Writes raw files, TFDS documents, tokenizer, eval split and reports under `root`. Returns the manifest."""
  # Imported here: tensorflow is slow to import and a cache hit needs none of it.
  from data_pipelines import bad_input  # pylint: disable=import-outside-toplevel
  from data_pipelines import build as build_lib  # pylint: disable=import-outside-toplevel
  from data_pipelines import readers  # pylint: disable=import-outside-toplevel


  start = time.time()
  rngs = streams()
  digits = demo_files.load_digits(rngs["split"], rngs["render"])
  pools = demo_docs.ClassPools(digits.train, digits.labels, rngs["documents"])  # training indices only
  docs = [demo_docs.mmc4_document(rngs["documents"], d, pools, digits.inks.__getitem__) for d in range(N_MMC4_DOCS)]
  pairs = [demo_docs.laion_pair(rngs["laion"], pools, digits.inks.__getitem__) for _ in range(N_LAION_PAIRS)]

  raw = os.path.join(root, "raw")
  inputs = {"mmc4": dict(input_dir=os.path.join(raw, "mmc4"), images_dir=os.path.join(raw, "mmc4_images")),
            "laion": dict(input_dir=os.path.join(raw, "laion"))}
  dirt = {"mmc4": demo_files.write_mmc4(inputs["mmc4"]["input_dir"], inputs["mmc4"]["images_dir"], docs, digits,
                                        rngs["files"]),
          "laion": demo_files.write_laion(inputs["laion"]["input_dir"], pairs, digits)}
  demo_files.write_eval(os.path.join(root, "eval", "digits_eval.npz"), digits)

  # The real build step and tokenizer trainer, exactly as a user runs them on downloaded shards.
  data_dir = os.path.join(root, "tfds")
  reports = {source: build_lib.build(source, data_dir=data_dir, num_workers=_BUILD_WORKERS, **kw)
             for source, kw in inputs.items()}
  os.makedirs(os.path.join(root, "reports"))
  for source, report in reports.items():
    with open(os.path.join(root, "reports", f"{source}.json"), "w") as f:
      json.dump(report, f, indent=2, sort_keys=True)
  counter = bad_input.BadInputCounter()
  texts = [t for source, kw in inputs.items() for t in readers.read_texts(source, kw["input_dir"], counter)]
  tokenizer_lib.train_tokenizer(texts, VOCAB_SIZE, os.path.join(root, "tokenizer", "demo.model"))

  used = {im.index for doc in docs for im in doc.images} | {index for index, _, _ in pairs}
  manifest = dict(
      version=VERSION, seed=SEED, image_size=demo_files.IMAGE_SIZE, patches_per_image=PATCHES_PER_IMAGE,
      vocab_size=VOCAB_SIZE, train_images=len(digits.train), held_out_images=len(digits.held),
      training_images_used=len(used), mmc4_documents=len(docs),
      mmc4_image_links=sum(len(doc.images) for doc in docs), laion_pairs=len(pairs), tokenizer_texts=len(texts),
      dirt_written=dirt, build_seconds=round(time.time() - start, 1))
  with open(os.path.join(root, "manifest.json"), "w") as f:  # written last: its presence marks a complete build
    json.dump(manifest, f, indent=2, sort_keys=True)
  return manifest


def _relocate(tmp, root):
  """The build reports name the temporary folder; point them at the final one before the rename."""
  for folder, _, files in os.walk(tmp):
    for name in files:
      if name.endswith(".json") and ("reports" in folder or name == "build_report.json"):
        path = os.path.join(folder, name)
        with open(path) as f:
          text = f.read()
        with open(path, "w") as f:
          f.write(text.replace(tmp, root))


def _paths(root):
  with open(os.path.join(root, "manifest.json")) as f:
    manifest = json.load(f)
  reports = {}
  for source in ("mmc4", "laion"):
    with open(os.path.join(root, "reports", f"{source}.json")) as f:
      reports[source] = json.load(f)
  return DemoPaths(
      root=root, data_dir=os.path.join(root, "tfds"), tokenizer_path=os.path.join(root, "tokenizer", "demo.model"),
      eval_path=os.path.join(root, "eval", "digits_eval.npz"), mmc4_dir=os.path.join(root, "raw", "mmc4"),
      mmc4_images_dir=os.path.join(root, "raw", "mmc4_images"), laion_dir=os.path.join(root, "raw", "laion"),
      reports=reports, manifest=manifest)


def default_cache_dir():
  return os.environ.get("LCL_DEMO_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "lcl_jax")


def _remove_stale_builds(parent):
  """Temp folders of builds that died (killed, power cut) more than an hour ago; live ones are left alone."""
  for name in os.listdir(parent):
    path = os.path.join(parent, name)
    if name.startswith(f".{VERSION}.tmp-") and time.time() - os.path.getmtime(path) > _STALE_TMP_S:
      shutil.rmtree(path, ignore_errors=True)


def ensure_demo(cache_dir=None) -> DemoPaths:
  """The demo corpus under `<cache_dir>/demo_v1`, built on first use; a cheap lookup afterwards."""
  root = os.path.join(os.path.abspath(cache_dir or default_cache_dir()), VERSION)
  if os.path.exists(os.path.join(root, "manifest.json")):
    return _paths(root)
  parent = os.path.dirname(root)
  os.makedirs(parent, exist_ok=True)
  _remove_stale_builds(parent)
  tmp = tempfile.mkdtemp(prefix=f".{VERSION}.tmp-", dir=parent)
  try:
    _generate(tmp)
    _relocate(tmp, root)
    try:
      os.rename(tmp, root)  # atomic; fails if another process finished first, whose corpus is then used
    except OSError as e:
      if not os.path.exists(os.path.join(root, "manifest.json")):
        raise RuntimeError(f"{root} exists but holds no complete demo corpus; delete it to rebuild.") from e
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return _paths(root)


DEMO = "demo"  # the value of a path setting that means this corpus
_KINDS = {"data_dir": "data_dir", "tokenizer": "tokenizer_path", "eval": "eval_path"}


def resolve(path: str, kind: str) -> str:
  """A path setting as given, or, when it is "demo", the demo corpus's own (built on first use): `kind` is
  "data_dir" (config.data.data_dir, an evaluator's data_dir), "tokenizer" (config.data.tokenizer) or "eval" (an
  evaluator's dataset: the held-out .npz)."""
  if kind not in _KINDS:
    raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
  return getattr(ensure_demo(), _KINDS[kind]) if path == DEMO else path
