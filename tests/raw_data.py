"""Writers of small raw MMC4 / OBELICS / LAION shards and images, for the data_pipelines tests.

Each writes the real on-disk format of docs/formats.md (JSON lines, zip, parquet, webdataset tar), so the tests exercise
the same code paths as users' downloads.
"""
import io
import json
import tarfile
import zipfile

import numpy as np
from PIL import Image
import pyarrow as pa
import pyarrow.parquet as pq


def image_bytes(fmt="PNG", size=(16, 12), color=(200, 30, 60), mode="RGB", **save_kwargs) -> bytes:
  """A solid-colour image encoded in `fmt`."""
  image = Image.new(mode, size, color)
  out = io.BytesIO()
  image.save(out, format=fmt, **save_kwargs)
  return out.getvalue()


def patterned_png(seed: int, size=(16, 16)) -> bytes:
  """A PNG with distinct random pixels, so each test image is recognisable after a round trip."""
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="PNG")
  return out.getvalue()


def decode(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def write_jsonl(path, records, *, zipped=False):
  """records: dicts (one JSON line each) or raw bytes lines (written as they are, dirt included)."""
  lines = b"".join((r if isinstance(r, bytes) else json.dumps(r).encode("utf-8")) + b"\n" for r in records)
  path.parent.mkdir(parents=True, exist_ok=True)
  if zipped:
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr(path.name[:-len(".zip")], lines)
  else:
    path.write_bytes(lines)
  return path


def mmc4_doc(texts, images, url="http://example.com/doc", **extra):
  """images: (image_name, matched_text_index, matched_sim) triples."""
  info = [dict(image_name=n, raw_url=f"http://example.com/{n}", matched_text_index=i, matched_sim=s)
          for n, i, s in images]
  return dict(url=url, text_list=texts, image_info=info, **extra)


def write_tar(path, members):
  """members: (name, bytes) for files, (name, None) for a directory entry, (name, "symlink:target") for a link."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
      elif isinstance(data, str) and data.startswith("symlink:"):
        info.type = tarfile.SYMTYPE
        info.linkname = data[len("symlink:"):]
        tar.addfile(info)
      else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  return path


def write_parquet(path, rows, *, row_group_size=2):
  """OBELICS rows: dicts with images, texts, metadata, general_metadata."""
  path.parent.mkdir(parents=True, exist_ok=True)
  table = pa.table({
      "images": pa.array([r["images"] for r in rows], pa.list_(pa.string())),
      "texts": pa.array([r["texts"] for r in rows], pa.list_(pa.string())),
      "metadata": pa.array([r.get("metadata", "[]") for r in rows], pa.string()),
      "general_metadata": pa.array([r.get("general_metadata", "{}") for r in rows], pa.string()),
  })
  pq.write_table(table, path, row_group_size=row_group_size)
  return path


def obelics_row(pieces):
  """pieces: ("text", str) or ("image", entry) in document order -> an OBELICS row."""
  images = [value if kind == "image" else None for kind, value in pieces]
  texts = [value if kind == "text" else None for kind, value in pieces]
  metadata = json.dumps([{"src": v} if k == "image" else None for k, v in pieces])
  return dict(images=images, texts=texts, metadata=metadata,
              general_metadata=json.dumps({"url": "http://example.com/page"}))
