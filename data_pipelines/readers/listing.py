"""The raw shard files of a folder, one per shard: shared by the readers, the build report and tokenizer training.

A folder can hold one shard in two encodings: MMC4's `docs_shard_0_v2.jsonl.zip` beside the `docs_shard_0_v2.jsonl`
that unzipping in place leaves, or an OBELICS `part-0.parquet` beside its `part-0.jsonl` conversion. Reading both
would duplicate every document silently, so files are grouped by shard stem (the name without the encoding suffix)
and exactly one file per stem is read: the one whose encoding comes first in the reader's `SHARD_SUFFIXES`. Each file
left out is skipped, counted (`duplicate_encoding`, unit "shard_file") and logged once, like any other bad input; the
build report names them all (data_pipelines/build.py, section "shards").
"""
from typing import Callable

import tensorflow as tf

from data_pipelines.bad_input import BadInputCounter
from data_pipelines.readers.jsonl import basename

DUPLICATE_ENCODING = "duplicate_encoding"
SHARD_FILE = "shard_file"


def _split(path: str, suffixes: tuple[str, ...]) -> tuple[str, int]:
  """(shard stem, preference rank) of a file matched by one of `suffixes`; the longest matching suffix decides."""
  suffix = max((s for s in suffixes if path.endswith(s)), key=len)
  return path[:-len(suffix)], suffixes.index(suffix)


def select_shards(input_dir: str, suffixes: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
  """(files to read, one per shard, sorted by name: the reading order; {file left out: file read instead}).

  suffixes: the encodings a reader accepts, most preferred first; files directly in `input_dir` only.
  """
  paths = set()
  for suffix in suffixes:
    paths.update(tf.io.gfile.glob(input_dir.rstrip("/") + "/*" + suffix))
  read, ignored = {}, {}  # stem -> the file read; file left out -> the file read instead
  for (stem, _), path in sorted((_split(p, suffixes), p) for p in paths):  # per stem, most preferred first
    if stem in read:
      ignored[path] = read[stem]
    else:
      read[stem] = path
  return sorted(read.values()), ignored


def shards(input_dir: str, suffixes: tuple[str, ...], counter: BadInputCounter | None = None,
           select: Callable[[str], bool] | None = None) -> list[str]:
  """The files to read (select_shards); each file left out is counted in `counter`.

  A file left out is counted under its name, and only if `select` accepts that name: each split counts its share,
  the splits together count each file once (as readers/laion.py does for tar members).
  """
  read, ignored = select_shards(input_dir, suffixes)
  if counter is not None:
    for other, kept in sorted(ignored.items()):
      if select is None or select(basename(other)):
        counter.skip(DUPLICATE_ENCODING, f"{other} ({basename(kept)} is read instead)", unit=SHARD_FILE)
  return read
