"""The built TFDS documents of one source as a random-access sequence: `len(docs)` and `docs.get([i, j, ...])`.

Random access is what lets every host read exactly its share of a per-epoch permutation and resume from a position.
- ArrayRecord builds (`python -m data_pipelines.build ... --file_format=array_record`) are read through tfds
  `as_data_source`: any size, local or gs://, nothing held in memory.
- TFRecord builds (the build's default, and the bundled demo corpus) have no index. They are read once into memory as
  serialized records, up to IN_MEMORY_LIMIT bytes per split, and parsed on access; a larger TFRecord corpus is refused
  with the command that rebuilds it as ArrayRecord.
"""
import json

from absl import logging
import tensorflow as tf

from data_pipelines.errors import DataSetupError
from data_pipelines import build as build_lib
from data_pipelines.builders import dataset_name
from data_pipelines.readers import SOURCES

IN_MEMORY_LIMIT = 2 << 30  # bytes of serialized TFRecord documents per split and host


def source_of(tfds_name: str) -> str:
  """"lcl_mmc4" -> "mmc4"; config.data.sources holds TFDS names."""
  names = {dataset_name(s): s for s in SOURCES}
  if tfds_name not in names:
    raise DataSetupError(f"config.data.sources has {tfds_name!r}; expected TFDS names among {sorted(names)}.")
  return names[tfds_name]


def _build_command(source: str, data_dir: str) -> str:
  return (f"python -m data_pipelines.build --source={source} --input=RAW_{source.upper()}_DIR --data_dir={data_dir} "
          "--file_format=array_record")


class Documents:
  """One split of one built source. `get` returns documents as tfds decodes them (numpy values, bytes images)."""

  def __init__(self, tfds_name: str, data_dir: str, split: str):
    self.name, self.source = tfds_name, source_of(tfds_name)
    builder = build_lib.get_builder(self.source, data_dir)
    info_path = f"{builder.data_path}/dataset_info.json"
    if not tf.io.gfile.exists(info_path):
      raise DataSetupError(
          f"No built {tfds_name} in config.data.data_dir={data_dir!r} ({info_path} is missing). Build it with:\n  "
          f"{_build_command(self.source, data_dir)}")
    info = builder.info
    if split not in info.splits:
      raise DataSetupError(f"{tfds_name} in {data_dir} has splits {sorted(info.splits)}, not {split!r}.")
    self.file_format = info.file_format.value
    self.build_skips = _build_skips(self.source, data_dir)
    if self.file_format == "array_record":
      self._source = builder.as_data_source(split)
      self._records = None
      self._features = None
    else:
      size = int(info.splits[split].num_bytes)
      if size > IN_MEMORY_LIMIT:
        raise DataSetupError(
            f"{tfds_name} in config.data.data_dir={data_dir!r} is a {self.file_format} build of {size / 2**30:.1f} "
            f"GiB: training reads documents by index, which needs ArrayRecord above "
            f"{IN_MEMORY_LIMIT / 2**30:.0f} GiB. Rebuild it with:\n  {_build_command(self.source, data_dir)} "
            "--overwrite")
      files = [str(f) for f in info.splits[split].filepaths]
      self._records = list(tf.data.TFRecordDataset(files).as_numpy_iterator())  # stored order = index order
      self._features = info.features
      logging.info("%s: %d %s documents (%.1f MiB) read into memory for random access.", tfds_name,
                   len(self._records), self.file_format, size / 2**20)

  def __len__(self) -> int:
    return len(self._records) if self._records is not None else len(self._source)

  def get(self, indices) -> list[dict]:
    indices = [int(i) for i in indices]
    if self._records is not None:
      return [self._features.deserialize_example_np(self._records[i]) for i in indices]
    return list(self._source.__getitems__(indices))


def _build_skips(source: str, data_dir: str) -> dict[str, int]:
  """What the build skipped, by reason (documents and images; build_report.json), or {} without a report."""
  path = build_lib.report_path(source, data_dir)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path, "r") as f:
    report = json.load(f)
  counts = {}
  for unit in ("documents", "images"):
    for reason, n in report.get(unit, {}).get("skipped", {}).items():
      counts[reason] = counts.get(reason, 0) + int(n)
  return counts
