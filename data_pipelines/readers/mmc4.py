"""MMC4 reader: `docs_shard_*.jsonl[.zip]` documents + downloaded images -> unified documents (readers/schema.py).

Input (docs/formats.md): shards `*.jsonl` and `*.jsonl.zip` directly in `input_dir`, read in name order, one document
per line with `text_list` and `image_info` (`image_name`, `matched_text_index`, `matched_sim`); `similarity_matrix` and
other keys are optional. A shard present in both encodings is read once, from its `.jsonl.zip`; the `.jsonl` is
counted `duplicate_encoding` (readers/listing.py). Images come from `images_dir` (default `<input_dir>/images`): a
folder of files named by `image_name`, or tar shards whose member names are the image names (readers/image_store.py).

Every text piece is kept (the indices of `image_info` point into `text_list`); every image that exists, is safe to
open, points at a real sentence and validates is kept, in `image_info` order. The MMC4 selection rules (similarity
threshold, one image per sentence, at most 6) belong to row building, not here, so they can change without a rebuild.

Skipped and counted (unit in brackets): broken_json, invalid_utf8, malformed_document, empty_document [document];
bad_text_index, unsafe_path, missing_image, malformed_image_entry and every validate_image reason [image];
no_usable_image [document] when nothing is left. doc_id is "<shard file>:<line number from 0>".
"""
from typing import Callable, Iterator

from data_pipelines.bad_input import BadInputCounter, DOCUMENT, IMAGE
from data_pipelines.readers import jsonl
from data_pipelines.readers import listing
from data_pipelines.readers import schema
from data_pipelines.readers.image_store import open_image_store, read_valid
from data_pipelines.readers.parallel import documents

SOURCE = "mmc4"
# Most preferred first: the download itself (CRC-checked) over the copy unzipping leaves, truncated if interrupted.
SHARD_SUFFIXES = (".jsonl.zip", ".jsonl")


def shards(input_dir: str, counter: BadInputCounter | None = None,
           select: Callable[[str], bool] | None = None) -> list[str]:
  return listing.shards(input_dir, SHARD_SUFFIXES, counter, select)


def _records(input_dir: str, counter: BadInputCounter, select: Callable[[str], bool] | None) -> Iterator[dict]:
  """Parsed, schema-checked documents without images: dict(doc_id, texts, image_info, similarity_matrix)."""
  for path in shards(input_dir, counter, select):
    name = jsonl.basename(path)
    for line_number, raw in enumerate(jsonl.lines(path)):
      doc_id = f"{name}:{line_number}"
      if select is not None and not select(doc_id):
        continue  # another split's document: decided before any parsing, so each split counts its own dirt
      record = jsonl.parse_line(raw, doc_id, counter)
      if record is None:
        continue
      texts, image_info = record.get("text_list"), record.get("image_info", [])
      if not isinstance(texts, list) or not isinstance(image_info, list):
        counter.skip("malformed_document", doc_id, unit=DOCUMENT)
        continue
      if any(not isinstance(t, str) for t in texts):
        counter.skip("malformed_document", doc_id, unit=DOCUMENT)
        continue
      if not all(schema.is_clean_text(t) for t in texts):
        counter.skip(jsonl.INVALID_UTF8, doc_id, unit=DOCUMENT)
        continue
      if schema.is_blank(texts):
        counter.skip("empty_document", doc_id, unit=DOCUMENT)
        continue
      matrix = record.get("similarity_matrix")
      yield dict(doc_id=doc_id, texts=texts, image_info=image_info,
                 similarity_matrix=matrix if isinstance(matrix, list) else None)


def _similarity(info: dict, k: int, text_index: int, matrix: list | None) -> float:
  """matched_sim; else the similarity_matrix entry; else 1.0 (no similarity known)."""
  sim = schema.finite_float(info.get("matched_sim"), float("nan"))
  if sim == sim:
    return sim
  try:
    return schema.finite_float(matrix[k][text_index], 1.0)
  except (TypeError, IndexError, KeyError):
    return 1.0


def read(input_dir: str, counter: BadInputCounter, *, images_dir: str | None = None,
         select: Callable[[str], bool] | None = None, num_workers: int = 1,
         image_options: dict | None = None) -> Iterator[dict]:
  """Yields unified documents (readers/schema.py) in shard and line order.

  select: keeps only documents whose doc_id it accepts (splits); decided before parsing.
  num_workers: threads validating images (results stay in order).
  image_options: keyword arguments for validate_image (max_pixels, max_side, min_side, max_stored_side).
  """
  store = open_image_store(images_dir or input_dir.rstrip("/") + "/images")
  image_options = image_options or {}

  def process(record: dict) -> dict | None:
    doc_id, texts = record["doc_id"], record["texts"]
    images, links, sims = [], [], []
    for k, info in enumerate(record["image_info"]):
      if not isinstance(info, dict):
        counter.skip("malformed_image_entry", doc_id, unit=IMAGE)
        continue
      name, index = info.get("image_name"), info.get("matched_text_index")
      where = f"{doc_id} {name!r}"
      if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(texts):
        counter.skip("bad_text_index", where, unit=IMAGE)
        continue
      data, reason = read_valid(store, name, image_options)
      if reason is not None:
        counter.skip(reason, where, unit=IMAGE)
        continue
      images.append(data)
      links.append(index)
      sims.append(_similarity(info, k, index, record["similarity_matrix"]))
    if not images:
      counter.skip("no_usable_image", doc_id, unit=DOCUMENT)
      return None
    return schema.make_document(doc_id=doc_id, source=SOURCE, texts=texts, images=images, image_text_index=links,
                                image_sim=sims, placement=schema.PLACEMENT_RANDOM)

  yield from documents(process, _records(input_dir, counter, select), num_workers, close=store.close)


def texts(input_dir: str, counter: BadInputCounter) -> Iterator[str]:
  """Every sentence of every readable document, images untouched (tokenizer training)."""
  for record in _records(input_dir, counter, None):
    yield from record["texts"]
