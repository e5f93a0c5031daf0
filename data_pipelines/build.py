"""Raw shards -> TFDS documents, once per corpus, with a report of what was kept and what was skipped and why.

  python -m data_pipelines.build --source=mmc4 --input=RAW_DIR --data_dir=DIR [--images=IMAGES] [--mapping=...]

writes `DIR/lcl_<source>/1.0.0/*.tfrecord-*` (builders.py) and `DIR/lcl_<source>/build_report.json`, and prints the
report. `--file_format=array_record` writes ArrayRecord files instead: random access, which the training pipeline
needs for corpora larger than it holds in memory (data_pipelines/README.md). Training reads the result with
`load_documents(source, DIR)` (or `tfds.builder("lcl_<source>", data_dir=DIR)` after importing
data_pipelines.builders). Local folders and gs:// alike; nothing is downloaded.

Report (deterministic for the same input, except `build_seconds`):
  documents: read = kept + sum(skipped); skipped by reason (broken_json, empty_document, no_usable_image, ...)
  images:    read = kept + sum(skipped); every image reference of a parsed document, skipped by reason
             (missing_image, unsafe_path, truncated_image, ..., in_dropped_document)
  members:   skipped tar members and mapping lines that are neither documents nor images (odd_member_name, ...)
  shards:    raw files read (one per shard), and `ignored`: {file left out: file read instead} for every shard the
             folder holds in two encodings (`x.jsonl` beside `x.jsonl.zip`; readers/listing.py), never read twice
  splits:    documents and images kept per split; bytes: kept image and text bytes and the size of the TFDS files.
One input corpus per data_dir: a second, different corpus of the same source needs its own data_dir.
"""
import json
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipelines.bad_input import BadInputCounter, DOCUMENT, IMAGE
from data_pipelines.builders import BUILDERS, HOLDOUT, TRAIN, VERSION, dataset_name
from data_pipelines.readers import SOURCES, shard_files, shard_listing
from data_pipelines.readers.jsonl import basename
from data_pipelines.readers.listing import SHARD_FILE

REPORT_NAME = "build_report.json"


def get_builder(source: str, data_dir: str, **build_kwargs) -> tfds.core.DatasetBuilder:
  """The TFDS builder of one source under data_dir; build_kwargs (input_dir, ...) only matter for building."""
  dataset_name(source)  # validates the name
  return BUILDERS[source](data_dir=data_dir, **build_kwargs)


def report_path(source: str, data_dir: str) -> str:
  return f"{data_dir.rstrip('/')}/{dataset_name(source)}/{REPORT_NAME}"


def build(source: str, input_dir: str, data_dir: str, *, images_dir: str | None = None, mapping: str | None = None,
          num_shards: int | None = None, holdout_fraction: float = 0.0, num_workers: int = 1,
          image_options: dict | None = None, overwrite: bool = False, file_format: str = "tfrecord") -> dict:
  """Builds `lcl_<source>` in data_dir from the raw shards in input_dir; returns (and saves) the report.

  images_dir: MMC4/OBELICS images, a folder or tar shards (default `<input_dir>/images`).
  mapping: OBELICS image mapping: None (entries are file names), "sha1", or a url->file table (readers/obelics.py).
  num_shards: TFDS files per split (None: TFDS sizes them, 64 MiB to 1 GiB each); use at least the number of
    training hosts. Every split needs at least this many documents.
  holdout_fraction: this fraction of documents (by a hash of doc_id) goes to split "validation" instead of "train".
  num_workers: threads validating images; the output does not depend on it.
  image_options: keyword arguments for images.validate_image (max_pixels, max_side, min_side, max_stored_side).
  overwrite: rebuild even if the dataset exists; otherwise an existing build is kept and its saved report returned.
  file_format: "tfrecord" or "array_record" (random access; what data_pipelines/pipeline.py reads at scale).
  """
  if not shard_files(source, input_dir):
    raise ValueError(f"No {source} shards in {input_dir} (see data_pipelines/readers/{source}.py for the layout).")
  build_kwargs = dict(input_dir=input_dir, images_dir=images_dir, mapping=mapping,
                      holdout_fraction=holdout_fraction, num_workers=num_workers, image_options=image_options,
                      file_format=file_format)
  saved = report_path(source, data_dir)
  existing = get_builder(source, data_dir)  # reads what is on disk, in whatever format it was written
  version_dir = str(existing.data_path)
  if tf.io.gfile.exists(f"{version_dir}/dataset_info.json"):
    stored = existing.info.file_format.value
    if not overwrite and stored != file_format:  # tfds refuses to open a build as another format
      raise ValueError(f"{version_dir} holds {stored} files; pass overwrite=True (--overwrite) to rebuild it as "
                       f"{file_format}.")
    if not overwrite and tf.io.gfile.exists(saved):
      logging.info("%s already built in %s; reusing it (overwrite=True rebuilds).", existing.name, version_dir)
      with tf.io.gfile.GFile(saved, "r") as f:
        return json.load(f)
    tf.io.gfile.rmtree(version_dir)  # asked to, or a build without its report: do it again
  builder = get_builder(source, data_dir, **build_kwargs)

  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as unused:  # tfds insists on a download folder; keep it out of data_dir
    builder.download_and_prepare(download_dir=unused, download_config=tfds.download.DownloadConfig(
        num_shards=num_shards, try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  seconds = time.perf_counter() - start

  report = _report(builder, source, input_dir, data_dir, images_dir, mapping, seconds)
  tf.io.gfile.makedirs(saved.rsplit("/", 1)[0])
  with tf.io.gfile.GFile(saved, "w") as f:
    json.dump(report, f, indent=2, sort_keys=True)
  logging.info("Build report (%s):\n%s", saved, json.dumps(report, indent=2, sort_keys=True))
  return report


def _report(builder, source, input_dir, data_dir, images_dir, mapping, seconds) -> dict:
  counter = BadInputCounter()
  for split_counter in builder.split_counters.values():
    counter.update(split_counter)
  by_unit = counter.counts_by_unit()
  kept = {split: dict(stats) for split, stats in sorted(builder.split_kept.items())}
  kept_documents = sum(s["documents"] for s in kept.values())
  kept_images = sum(s["images"] for s in kept.values())
  skipped_documents = by_unit.get(DOCUMENT, {})
  skipped_images = by_unit.get(IMAGE, {})
  read_files, ignored = shard_listing(source, input_dir)
  return {
      "dataset": builder.name,
      "version": VERSION,
      "source": source,
      "input_dir": input_dir,
      "images_dir": images_dir,
      "mapping": mapping,
      "data_dir": data_dir,
      "documents": {"read": kept_documents + sum(skipped_documents.values()), "kept": kept_documents,
                    "skipped": skipped_documents},
      "images": {"read": kept_images + sum(skipped_images.values()), "kept": kept_images,
                 "skipped": skipped_images},
      # Shard files left out are named under "shards" (a user wants to know which), not counted again here.
      "members": {"skipped": {reason: n for unit, reasons in by_unit.items()
                              if unit not in (DOCUMENT, IMAGE, SHARD_FILE) for reason, n in reasons.items()}},
      "shards": {"read": len(read_files),
                 "ignored": {basename(other): basename(kept) for other, kept in sorted(ignored.items())}},
      "splits": {split: {"documents": s["documents"], "images": s["images"]} for split, s in kept.items()},
      "bytes": {"images_kept": sum(s["image_bytes"] for s in kept.values()),
                "texts_kept": sum(s["text_bytes"] for s in kept.values()),
                "dataset_files": int(builder.info.dataset_size)},
      "build_seconds": round(seconds, 3),
  }


def load_documents(source: str, data_dir: str, split: str = TRAIN, *, shuffle_files: bool = False,
                   read_config: tfds.ReadConfig | None = None) -> tf.data.Dataset:
  """The built documents as a tf.data.Dataset of dicts (features of builders.features(); images as bytes).

  For multi-host training pass read_config=tfds.ReadConfig(input_context=...) to shard by file. An ArrayRecord build
  (which tfds only opens through `as_data_source`) is streamed in stored order, sharded by example index; it has no
  file shuffling (data_pipelines/pipeline.py shuffles by index instead).
  """
  builder = get_builder(source, data_dir)
  if builder.info.file_format.value != "array_record":
    return builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config)
  if shuffle_files:
    raise ValueError(f"{builder.name} is an ArrayRecord build: read it in order, or by index with as_data_source.")
  documents = builder.as_data_source(split)
  context = read_config.input_context if read_config else None
  first, step = (context.input_pipeline_id, context.num_input_pipelines) if context else (0, 1)
  return tf.data.Dataset.from_generator(lambda: (documents[i] for i in range(first, len(documents), step)),
                                        output_signature=builder.info.features.get_tensor_spec())


def _define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """CLI flags, defined only when run as a script: importing this module must not claim flag names."""
  define = dict(flag_values=flag_values)
  flags.DEFINE_enum("source", None, list(SOURCES), "Raw format of --input.", **define)
  flags.DEFINE_string("input", None, "Folder of raw shards (local or gs://).", **define)
  flags.DEFINE_string("data_dir", None, "TFDS data_dir to write lcl_<source> into.", **define)
  flags.DEFINE_string("images", None, "MMC4/OBELICS images: folder or tar shards (default <input>/images).", **define)
  flags.DEFINE_string("mapping", None, "OBELICS image mapping: 'sha1' or a url->file .tsv/.json table.", **define)
  flags.DEFINE_integer("num_shards", None, "TFDS files per split (default: sized by TFDS).", **define)
  flags.DEFINE_float("holdout_fraction", 0.0, "Fraction of documents for split 'validation'.", **define)
  flags.DEFINE_integer("num_workers", 8, "Image-validation threads.", **define)
  flags.DEFINE_integer("max_stored_side", None, "Downscale stored images whose longer side exceeds this.", **define)
  flags.DEFINE_bool("overwrite", False, "Rebuild even if the dataset exists.", **define)
  flags.DEFINE_enum("file_format", "tfrecord", ["tfrecord", "array_record"],
                    "TFDS file format; array_record gives the random access training needs at scale.", **define)
  flags.mark_flags_as_required(["source", "input", "data_dir"], **define)


def run(f: flags.FlagValues) -> dict:
  """The CLI on parsed flags (tests call it with their own FlagValues): builds, prints and returns the report."""
  image_options = {"max_stored_side": f.max_stored_side} if f.max_stored_side else None
  report = build(f.source, f.input, f.data_dir, images_dir=f.images, mapping=f.mapping, num_shards=f.num_shards,
                 holdout_fraction=f.holdout_fraction, num_workers=f.num_workers, image_options=image_options,
                 overwrite=f.overwrite, file_format=f.file_format)
  print(json.dumps(report, indent=2, sort_keys=True))
  return report


def main(argv):
  del argv
  run(flags.FLAGS)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
