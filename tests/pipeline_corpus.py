"""Small generated TFDS corpora for the pipeline tests: every image unique and recognisable by its pixels.

Documents go through the real builders (data_pipelines/builders.py, ArrayRecord files) with the raw readers swapped
for a list, so the pipeline reads exactly what a real build writes, including bytes the readers would have refused.
"""
import hashlib
import io
import struct
import tempfile
import zlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from data_pipelines import builders
from raw_data import image_bytes, patterned_png

IMAGE_SIZE = 16  # test images are 16 x 16 PNGs: the eval transform at image_size 16 returns their exact pixels
WORDS = "the red cat sat on a mat and a dog ran to see the big sun over green hills".split()


def pixel_hash(pixels: np.ndarray) -> str:
  return hashlib.sha1(np.ascontiguousarray(pixels, np.uint8).tobytes()).hexdigest()


def png_hash(data: bytes) -> str:
  return pixel_hash(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def _words(rng, n):
  return " ".join(rng.choice(WORDS, size=n))


def laion_docs(n, seed=1):
  rng = np.random.default_rng(seed)
  return [dict(doc_id=f"laion:{i}", source="laion", texts=[_words(rng, 3)],
               images=[patterned_png(seed * 100_000 + i, (IMAGE_SIZE, IMAGE_SIZE))], image_text_index=[0],
               image_sim=[1.0], placement=0) for i in range(n)]


def mmc4_docs(n, seed=2, max_images=6):
  """1..max_images images, each matched to its own short sentence with a similarity the filter keeps: every image
  of every document ends up in a row."""
  rng = np.random.default_rng(seed)
  docs = []
  for i in range(n):
    k = int(rng.integers(1, max_images + 1))
    docs.append(dict(doc_id=f"mmc4:{i}", source="mmc4", texts=[_words(rng, 2) for _ in range(k)],
                     images=[patterned_png(seed * 100_000 + 10 * i + j, (IMAGE_SIZE, IMAGE_SIZE)) for j in range(k)],
                     image_text_index=list(range(k)), image_sim=[0.5] * k, placement=0))
  return docs


def obelics_docs(n, seed=3):
  rng = np.random.default_rng(seed)
  docs = []
  for i in range(n):
    k = int(rng.integers(1, 4))
    texts = [_words(rng, int(rng.integers(2, 12))) for _ in range(k + 1)]
    docs.append(dict(doc_id=f"obelics:{i}", source="obelics", texts=texts,
                     images=[patterned_png(seed * 100_000 + 10 * i + j, (IMAGE_SIZE, IMAGE_SIZE)) for j in range(k)],
                     image_text_index=sorted(int(x) for x in rng.integers(0, k + 2, size=k)),
                     image_sim=[1.0] * k, placement=1))
  return docs


def write_source(data_dir, source, docs):
  """Writes docs as the built `lcl_<source>` (ArrayRecord) in data_dir, through the real builder."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(builders, "read_documents", lambda *args, **kwargs: iter(docs))
    builder = builders.BUILDERS[source](data_dir=str(data_dir), input_dir="generated", file_format="array_record")
    with tempfile.TemporaryDirectory() as unused:
      builder.download_and_prepare(download_dir=unused, download_config=tfds.download.DownloadConfig(
          try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))


# ---------------------------------------------------------------------------------------------------------------------
# Bytes the build would have refused or converted, stored anyway (as if storage were corrupted or the build older).


def _png_with_size(width, height) -> bytes:
  """A PNG whose header declares width x height (a decompression bomb when huge); the pixel data is a tiny stub."""
  data = bytearray(patterned_png(0, (8, 8)))
  ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
  data[16:29] = ihdr
  data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
  return bytes(data)


def _corrupt_png() -> bytes:
  """A valid header over a damaged pixel stream."""
  data = bytearray(patterned_png(5, (IMAGE_SIZE, IMAGE_SIZE)))
  for i in range(60, 80):
    data[i] ^= 0xFF
  return bytes(data)


def _grey16_png() -> bytes:
  out = io.BytesIO()
  Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)).save(out, format="PNG")
  return out.getvalue()


BAD_IMAGES = {  # reason the pipeline must count -> bytes
    "empty_file": b"",
    "not_an_image": b"<html>404 not found</html>",
    "truncated_image": image_bytes("PNG", size=(64, 64))[:-40],
    "corrupt_image": _corrupt_png(),
    "image_too_large": _png_with_size(100_000, 100_000),
}
CONVERTIBLE_IMAGES = {  # kept after conversion to RGB, never dropped
    "cmyk": image_bytes("JPEG", size=(16, 16), color=(0, 255, 255, 0), mode="CMYK"),
    "grey16": _grey16_png(),
    "palette": image_bytes("PNG", size=(16, 16), color=3, mode="P"),
    "rgba": image_bytes("PNG", size=(16, 16), color=(10, 200, 30, 128), mode="RGBA"),
    "grey": image_bytes("PNG", size=(16, 16), color=77, mode="L"),
}


class _NotUtf8(str):
  """Text that is written to the TFDS files as Latin-1 bytes, which are not valid UTF-8."""

  def encode(self, encoding="utf-8", errors="strict"):
    return str(self).replace("e", "\xe9").encode("latin-1")


def dirty_mmc4_docs(good=12):
  """One image per document: `good` clean ones, one per BAD_IMAGES kind, one per CONVERTIBLE_IMAGES kind, and one
  whose text is not UTF-8."""
  docs = mmc4_docs(good, seed=7, max_images=1)
  for name, data in list(BAD_IMAGES.items()) + list(CONVERTIBLE_IMAGES.items()):
    docs.append(dict(doc_id=f"dirty:{name}", source="mmc4", texts=["a cat"], images=[data], image_text_index=[0],
                     image_sim=[0.5], placement=0))
  docs.append(dict(doc_id="dirty:invalid_utf8", source="mmc4", texts=[_NotUtf8("cafe au lait")],
                   images=[patterned_png(1234, (IMAGE_SIZE, IMAGE_SIZE))], image_text_index=[0], image_sim=[0.5],
                   placement=0))
  return docs
