"""Readers of the raw MMC4, OBELICS and LAION shards, all yielding the schema of readers/schema.py.

One module per format (mmc4.py, obelics.py, laion.py); this module only dispatches by source name. Every path goes
through tf.io.gfile, so local folders and gs:// URLs work alike, and shards are streamed, never loaded whole.
"""
from typing import Callable, Iterator

from data_pipelines.bad_input import BadInputCounter
from data_pipelines.readers import laion
from data_pipelines.readers import listing
from data_pipelines.readers import mmc4
from data_pipelines.readers import obelics

READERS = {"mmc4": mmc4, "obelics": obelics, "laion": laion}
SOURCES = tuple(READERS)


def _reader(source: str):
  if source not in READERS:
    raise ValueError(f"Unknown source {source!r}; expected one of {SOURCES}.")
  return READERS[source]


def shard_files(source: str, input_dir: str) -> list[str]:
  """The raw shard files a reader would read from input_dir, in reading order: one per shard (readers/listing.py)."""
  return _reader(source).shards(input_dir)


def shard_listing(source: str, input_dir: str) -> tuple[list[str], dict[str, str]]:
  """(shard_files, {file left out: file of the same shard read instead}) for the build report."""
  return listing.select_shards(input_dir, _reader(source).SHARD_SUFFIXES)


def read_documents(source: str, input_dir: str, counter: BadInputCounter, *, images_dir: str | None = None,
                   mapping: str | None = None, select: Callable[[str], bool] | None = None, num_workers: int = 1,
                   image_options: dict | None = None) -> Iterator[dict]:
  """Unified documents of one source, in a deterministic order.

  images_dir: MMC4/OBELICS image folder or tar shards (default `<input_dir>/images`); LAION has none.
  mapping: OBELICS image mapping (None, "sha1" or a url->file table; see readers/obelics.py).
  select: keep only the doc_ids it accepts (decided before parsing; used for splits).
  num_workers: image-validation threads; image_options: keyword arguments for images.validate_image.
  """
  reader = _reader(source)
  kwargs = dict(select=select, num_workers=num_workers, image_options=image_options)
  if source != "laion":
    kwargs["images_dir"] = images_dir
  elif images_dir is not None:
    raise ValueError("LAION shards hold their own images; images_dir does not apply.")
  if source == "obelics":
    kwargs["mapping"] = mapping
  elif mapping is not None:
    raise ValueError("mapping applies to OBELICS only.")
  return reader.read(input_dir, counter, **kwargs)


def read_texts(source: str, input_dir: str, counter: BadInputCounter) -> Iterator[str]:
  """Text pieces of one source (sentences, texts, captions) without opening any image: tokenizer training."""
  return _reader(source).texts(input_dir, counter)
