"""OBELICS reader: parquet or JSON-lines rows + downloaded images -> unified documents (readers/schema.py).

Input (docs/formats.md): `*.parquet`, `*.jsonl` or `*.jsonl.zip` files directly in `input_dir`, read in name order
(parquet in row-group batches, never whole), rows with `images` and `texts` (same length; at each position exactly one
is non-null); `metadata` and `general_metadata` are not needed and not read. A shard present in several encodings is
read once: of `X.parquet`, `X.jsonl.zip` and `X.jsonl` the first present; the others are counted `duplicate_encoding`
(readers/listing.py).

Image entries (URLs, or local file names) are resolved to files by one of these mappings (`mapping=`):
  - None: the entries are file names relative to `images_dir`.
  - "sha1": `images_dir` holds files named by the SHA-1 hex digest of the entry's UTF-8 bytes (the URL), with any
    extension or none (`<sha1>`, `<sha1>.jpg`, `<sha1>.webp`, ...). The folder is listed once.
  - a path to a table `url -> file`: a `.json` file holding one object {url: file}, or any other file read as
    2-column TSV (`url<TAB>file` per line; a header line `url<TAB>file` is allowed). Files are relative to
    `images_dir` (default: the table's folder).
`images_dir` defaults to `<input_dir>/images`. All file names go through safe_join: absolute names or names escaping
the folder are counted `unsafe_path` and never opened.

Each document becomes: texts = the non-null texts in order; per kept image, image_text_index = the number of texts
before it (the text piece it immediately precedes; len(texts) when it ends the document); placement fixed.
Documents must keep 1 to 6 images after validation (docs/method.md section 2): others are counted `no_usable_image` or
`too_many_images` (their valid images then count as `in_dropped_document`). Other reasons as in mmc4.py, plus
`unmapped_image` [image] for an entry the mapping does not know. doc_id is "<file>:<row number from 0>".
"""
import hashlib
import io
import json
from typing import Callable, Iterator

import pyarrow.parquet as pq
import tensorflow as tf

from data_pipelines.bad_input import BadInputCounter, DOCUMENT, IMAGE, MEMBER
from data_pipelines.readers import jsonl
from data_pipelines.readers import listing
from data_pipelines.readers import schema
from data_pipelines.readers.image_store import ImageFolder, read_valid
from data_pipelines.readers.parallel import documents

SOURCE = "obelics"
# Most preferred first: the published, self-checking encodings (parquet footer, zip CRC) over a derived plain copy,
# which an interrupted conversion or unzip leaves truncated without any error.
SHARD_SUFFIXES = (".parquet", ".jsonl.zip", ".jsonl")
MIN_IMAGES, MAX_IMAGES = 1, 6
_BATCH_ROWS = 64


def shards(input_dir: str, counter: BadInputCounter | None = None,
           select: Callable[[str], bool] | None = None) -> list[str]:
  return listing.shards(input_dir, SHARD_SUFFIXES, counter, select)


class _Resolver:
  """Image entry -> file name relative to the images folder (None: unmapped)."""

  def __init__(self, images_dir: str, mapping: str | None, counter: BadInputCounter,
               select: Callable[[str], bool] | None):
    self._kind = "names" if mapping is None else "sha1" if mapping == "sha1" else "table"
    self._table = {}
    if self._kind == "sha1":
      # Any extension or none: index "<sha1>[.ext]" by its stem. A first listing beats guessing extensions.
      for name in sorted(tf.io.gfile.listdir(images_dir)):
        self._table.setdefault(name.split(".", 1)[0].lower(), name.rstrip("/"))
    elif self._kind == "table":
      with tf.io.gfile.GFile(mapping, "r") as f:
        content = f.read()
      if mapping.endswith(".json"):
        self._table = {str(k): v for k, v in json.loads(content).items()}
      else:
        for line_number, line in enumerate(content.splitlines()):
          parts = line.split("\t")
          if len(parts) != 2:
            where = f"{mapping}:{line_number}"
            if line.strip() and (select is None or select(where)):  # each split counts its share once
              counter.skip("malformed_mapping_line", where, unit=MEMBER)
            continue
          if line_number == 0 and parts == ["url", "file"]:
            continue
          self._table.setdefault(parts[0], parts[1])

  def __call__(self, entry: str):
    if self._kind == "names":
      return entry
    if self._kind == "sha1":
      return self._table.get(hashlib.sha1(entry.encode("utf-8")).hexdigest())
    return self._table.get(entry)


class _GFileRaw(io.RawIOBase):
  """A tf.io.gfile file as a standard raw stream: pyarrow needs `closed` and `readinto`, which GFile lacks."""

  def __init__(self, f):
    super().__init__()
    self._f = f

  def readable(self):
    return True

  def seekable(self):
    return True

  def readinto(self, buffer):
    data = self._f.read(len(buffer))
    buffer[:len(data)] = data
    return len(data)

  def seek(self, offset, whence=io.SEEK_SET):
    self._f.seek(offset, whence)
    return self._f.tell()

  def tell(self):
    return self._f.tell()


def _rows(path: str, counter: BadInputCounter, select: Callable[[str], bool] | None
          ) -> Iterator[tuple[str, dict | None]]:
  """(doc_id, row) of one file in order; row None for a JSON line that did not parse (counted).

  `select` is applied before parsing, so a split never counts another split's broken lines.
  """
  name = jsonl.basename(path)
  if path.endswith(".parquet"):
    with tf.io.gfile.GFile(path, "rb") as f:
      parquet = pq.ParquetFile(io.BufferedReader(_GFileRaw(f)))
      columns = [c for c in ("images", "texts") if c in parquet.schema_arrow.names]
      row_number = 0
      for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
        for row in batch.to_pylist():
          doc_id = f"{name}:{row_number}"
          row_number += 1
          if select is None or select(doc_id):
            yield doc_id, row
    return
  for line_number, raw in enumerate(jsonl.lines(path)):
    doc_id = f"{name}:{line_number}"
    if select is None or select(doc_id):
      yield doc_id, jsonl.parse_line(raw, doc_id, counter)  # None for blank or broken lines


def _records(input_dir: str, counter: BadInputCounter, select: Callable[[str], bool] | None) -> Iterator[dict]:
  """Schema-checked rows without images: dict(doc_id, texts, image_entries=[(entry, text_index)])."""
  for path in shards(input_dir, counter, select):
    for doc_id, row in _rows(path, counter, select):
      if row is None:
        continue
      images, texts = row.get("images"), row.get("texts")
      if not isinstance(images, list) or not isinstance(texts, list) or len(images) != len(texts):
        counter.skip("malformed_document", doc_id, unit=DOCUMENT)
        continue
      pieces, entries, reason = [], [], None
      for image, text in zip(images, texts):
        if image is None and text is None:
          continue  # an empty slot carries nothing; harmless
        if image is not None and text is not None:
          reason = "malformed_document"  # not OBELICS: which of the two is the content?
        elif text is not None:
          reason = (None if schema.is_clean_text(text) else
                    jsonl.INVALID_UTF8 if isinstance(text, str) else "malformed_document")
          pieces.append(text)
        else:
          entries.append((image, len(pieces)))
        if reason is not None:
          break
      if reason is not None:
        counter.skip(reason, doc_id, unit=DOCUMENT)
        continue
      if schema.is_blank(pieces):
        counter.skip("empty_document", doc_id, unit=DOCUMENT)
        continue
      yield dict(doc_id=doc_id, texts=pieces, image_entries=entries)


def read(input_dir: str, counter: BadInputCounter, *, images_dir: str | None = None, mapping: str | None = None,
         select: Callable[[str], bool] | None = None, num_workers: int = 1,
         image_options: dict | None = None) -> Iterator[dict]:
  """Yields unified documents in file and row order. Arguments as mmc4.read, plus `mapping` (module docstring)."""
  if images_dir is None:
    images_dir = (mapping.rsplit("/", 1)[0] if mapping not in (None, "sha1") and "/" in mapping
                  else input_dir.rstrip("/") + "/images")
  if not tf.io.gfile.isdir(images_dir):
    # Fail loudly: a wrong path would otherwise "succeed" with every image counted missing.
    raise ValueError(f"Image folder {images_dir} does not exist; pass images_dir (--images).")
  store = ImageFolder(images_dir)
  resolve = _Resolver(images_dir, mapping, counter, select)
  image_options = image_options or {}

  def process(record: dict) -> dict | None:
    doc_id, entries = record["doc_id"], record["image_entries"]
    images, links = [], []
    for k, (entry, text_index) in enumerate(entries):
      where = f"{doc_id} {entry!r}"
      file_name = resolve(entry) if isinstance(entry, str) else None
      if file_name is None:
        counter.skip("unmapped_image" if isinstance(entry, str) else "malformed_image_entry", where, unit=IMAGE)
        continue
      data, reason = read_valid(store, file_name, image_options)
      if reason is not None:
        counter.skip(reason, where, unit=IMAGE)
        continue
      images.append(data)
      links.append(text_index)
      if len(images) > MAX_IMAGES:
        # Decided: the document goes. Its valid images and the unexamined rest are lost with it.
        counter.skip("too_many_images", doc_id, unit=DOCUMENT)
        counter.skip("in_dropped_document", doc_id, unit=IMAGE, n=len(images) + len(entries) - k - 1)
        return None
    if len(images) < MIN_IMAGES:
      counter.skip("no_usable_image", doc_id, unit=DOCUMENT)
      return None
    return schema.make_document(doc_id=doc_id, source=SOURCE, texts=record["texts"], images=images,
                                image_text_index=links, image_sim=[1.0] * len(images),
                                placement=schema.PLACEMENT_FIXED)

  yield from documents(process, _records(input_dir, counter, select), num_workers, close=store.close)


def texts(input_dir: str, counter: BadInputCounter) -> Iterator[str]:
  """Every text piece of every readable row, images untouched (tokenizer training)."""
  for record in _records(input_dir, counter, None):
    yield from record["texts"]
