"""JSON-lines shards as users keep them: plain `*.jsonl` or zipped `*.jsonl.zip`, local or gs:// (tf.io.gfile).

Lines are read one at a time (a shard is never loaded whole). Each line is one record; a line that is not valid
UTF-8 or not a JSON object is skipped and counted (`invalid_utf8`, `broken_json`), and the rest of the shard is kept.
"""
import json
import zipfile
from typing import Iterator

import tensorflow as tf

from data_pipelines.bad_input import BadInputCounter, DOCUMENT

INVALID_UTF8 = "invalid_utf8"
BROKEN_JSON = "broken_json"


def basename(path: str) -> str:
  return path.rstrip("/").rsplit("/", 1)[-1]


def lines(path: str) -> Iterator[bytes]:
  """Raw lines of a `.jsonl` file or of the `.jsonl` member(s) of a `.jsonl.zip`, in order, without line ends."""
  with tf.io.gfile.GFile(path, "rb") as f:
    if not path.endswith(".zip"):
      for line in f:
        yield line.rstrip(b"\r\n")
      return
    with zipfile.ZipFile(f) as archive:
      names = sorted(n for n in archive.namelist() if not n.endswith("/"))
      jsonl = [n for n in names if n.endswith(".jsonl")]
      for name in jsonl or names:  # MMC4 zips hold one member named like the shard
        with archive.open(name) as member:
          for line in member:
            yield line.rstrip(b"\r\n")


def parse_line(raw: bytes, where: str, counter: BadInputCounter) -> dict | None:
  """One JSON object from one line, or None (counted). Blank lines return None uncounted (trailing newlines)."""
  if not raw.strip():
    return None
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    counter.skip(INVALID_UTF8, where, unit=DOCUMENT)
    return None
  try:
    record = json.loads(text)
  except ValueError:
    counter.skip(BROKEN_JSON, where, unit=DOCUMENT)
    return None
  if not isinstance(record, dict):
    counter.skip(BROKEN_JSON, where, unit=DOCUMENT)
    return None
  return record
