"""LAION pairs reader: img2dataset webdataset tars -> one unified document per (image, caption) (readers/schema.py).

Input (docs/formats.md): `*.tar` shards directly in `input_dir` (`00000.tar`, ...), read in name order; the per-shard
`.parquet` files are not needed. Members are grouped by sample key = the member path up to the first dot of its
basename (`dir/000017.jpg` -> key `dir/000017`, extension `jpg`), as webdataset does. Each tar's headers are indexed
first and samples are then read in order of first appearance, so members need not be contiguous (re-tarred folders
are in directory order) and only one sample's bytes are in memory at a time.

Per sample: the image is `KEY.jpg|jpeg|png|webp|gif|bmp|tif|tiff`, the caption is `KEY.txt` (stripped), falling back
to `caption` in `KEY.json` when the txt is absent or blank. The document is texts=[caption], images=[image],
image_text_index=[0], image_sim=[1.0] (the json's CLIP similarity is a filtering score, not MMC4's matched_sim),
placement random (LAION-Random). doc_id is "<shard file>:<key>".

Skipped and counted: missing_caption, missing_image, invalid_utf8 (txt), no_usable_image [document]; every
validate_image reason [image]; odd_member_name (directories, links and other non-files, names without extension or
starting with a dot), unsafe_path (absolute or `..` names), unknown_member (other extensions), duplicate_member,
broken_json (a json read for its caption, i.e. the txt was missing or blank, that does not parse) [member].
"""
import collections
import json
import tarfile
from typing import Callable, Iterator

import tensorflow as tf

from data_pipelines.bad_input import BadInputCounter, DOCUMENT, IMAGE, MEMBER, safe_relpath
from data_pipelines.images import IMAGE_TOO_LARGE, validate_image
from data_pipelines.readers import jsonl
from data_pipelines.readers import listing
from data_pipelines.readers import schema
from data_pipelines.readers.image_store import MAX_FILE_BYTES
from data_pipelines.readers.parallel import documents

SOURCE = "laion"
SHARD_SUFFIXES = (".tar",)  # one encoding only, but listed like the others (readers/listing.py)
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"})
_KINDS = {"txt": "txt", "json": "json", **{ext: "image" for ext in IMAGE_EXTENSIONS}}
_MAX_TEXT_BYTES = 1 << 20


def shards(input_dir: str, counter: BadInputCounter | None = None,
           select: Callable[[str], bool] | None = None) -> list[str]:
  return listing.shards(input_dir, SHARD_SUFFIXES, counter, select)


def _group(tar: tarfile.TarFile, shard: str, counter: BadInputCounter, select: Callable[[str], bool] | None
           ) -> dict[str, dict[str, tarfile.TarInfo]]:
  """key -> {"image"|"txt"|"json": member}, keys in order of first appearance; odd members counted and left out.

  A member's oddity is counted under the sample it belongs to ("<shard>:<key>") or, keyless, under "<shard>:<name>",
  and only if `select` accepts that id: each split counts its own share, the splits together count each once.
  """
  samples = collections.OrderedDict()

  def skip(reason, unit_id):
    if select is None or select(unit_id):
      counter.skip(reason, unit_id, unit=MEMBER)

  for member in tar:  # headers only: tarfile seeks over the data
    where = f"{shard}:{member.name}"
    rel = safe_relpath(member.name)
    if rel is None:
      skip("unsafe_path", where)
      continue
    if not member.isfile():  # directories, links, devices: never followed
      skip("odd_member_name", where)
      continue
    directory, _, base = rel.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not stem or not extension:
      skip("odd_member_name", where)
      continue
    key = f"{directory}/{stem}" if directory else stem
    kind = _KINDS.get(extension.lower())
    if kind is None:
      skip("unknown_member", f"{shard}:{key}")
      continue
    sample = samples.setdefault(key, {})
    if kind in sample:
      skip("duplicate_member", f"{shard}:{key}")
      continue
    sample[kind] = member
  return samples


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes | None:
  if member.size > limit:
    return None
  with tar.extractfile(member) as f:
    return f.read()


def _caption(tar: tarfile.TarFile, sample: dict, doc_id: str, counter: BadInputCounter) -> tuple[str | None, str]:
  """(caption or None, reason if None)."""
  if "txt" in sample:
    raw = _read_member(tar, sample["txt"], _MAX_TEXT_BYTES) or b""
    try:
      caption = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
      return None, jsonl.INVALID_UTF8
    if caption:
      return caption, ""
  if "json" in sample:
    raw = _read_member(tar, sample["json"], _MAX_TEXT_BYTES) or b""
    try:
      meta = json.loads(raw.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is a ValueError too
      counter.skip(jsonl.BROKEN_JSON, f"{doc_id}.json", unit=MEMBER)
      meta = None
    caption = meta.get("caption") if isinstance(meta, dict) else None
    if isinstance(caption, str) and schema.is_clean_text(caption) and caption.strip():
      return caption.strip(), ""
  return None, "missing_caption"


def _samples(input_dir: str, counter: BadInputCounter, select: Callable[[str], bool] | None, *,
             with_images: bool) -> Iterator[dict]:
  """dict(doc_id, caption, image) per complete sample; incomplete samples counted and skipped.

  image: the member bytes; None when not asked for, or when the member is over MAX_FILE_BYTES (never read).
  """
  for path in shards(input_dir, counter, select):
    name = jsonl.basename(path)
    with tf.io.gfile.GFile(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
      for key, sample in _group(tar, name, counter, select).items():
        doc_id = f"{name}:{key}"
        if select is not None and not select(doc_id):
          continue
        if "image" not in sample:
          counter.skip("missing_image", doc_id, unit=DOCUMENT)
          continue
        caption, reason = _caption(tar, sample, doc_id, counter)
        if caption is None:
          counter.skip(reason, doc_id, unit=DOCUMENT)
          continue
        image = _read_member(tar, sample["image"], MAX_FILE_BYTES) if with_images else None
        yield dict(doc_id=doc_id, caption=caption, image=image)


def read(input_dir: str, counter: BadInputCounter, *, select: Callable[[str], bool] | None = None,
         num_workers: int = 1, image_options: dict | None = None) -> Iterator[dict]:
  """Yields one unified document per usable sample, in shard and first-appearance order (arguments as mmc4.read)."""
  image_options = image_options or {}

  def process(sample: dict) -> dict | None:
    doc_id = sample["doc_id"]
    if sample["image"] is None:  # refused by size before reading
      data, reason = None, IMAGE_TOO_LARGE
    else:
      data, reason = validate_image(sample["image"], **image_options)
    if reason is not None:
      counter.skip(reason, doc_id, unit=IMAGE)
      counter.skip("no_usable_image", doc_id, unit=DOCUMENT)
      return None
    return schema.make_document(doc_id=doc_id, source=SOURCE, texts=[sample["caption"]], images=[data],
                                image_text_index=[0], image_sim=[1.0], placement=schema.PLACEMENT_RANDOM)

  yield from documents(process, _samples(input_dir, counter, select, with_images=True), num_workers)


def texts(input_dir: str, counter: BadInputCounter) -> Iterator[str]:
  """The caption of every sample that has an image member; image bytes are never read (tokenizer training)."""
  for sample in _samples(input_dir, counter, None, with_images=False):
    yield sample["caption"]
