"""Rows -> the chunks of a host batch under a row budget and an image budget (docs/method.md section 6). numpy only.

A chunk holds at most `rows_per_chunk` rows and `images_per_chunk` image slots, so the ViT runs on a fixed number of
real images. Rows are taken in stream order while both budgets hold; the first row that would overflow either closes
the chunk, and that row opens the next chunk (of the next batch, after the last chunk). Nothing is dropped and no row
is reordered, so a batch is a function of the row stream alone: which is what exact resume relies on.

A row with more images than `images_per_chunk` fits no chunk; the caller must drop (and count) it before packing.
"""
from typing import Iterable, Iterator, Sequence

from data_pipelines import batch_spec


def pack(items: Iterable, *, num_chunks: int, rows_per_chunk: int, images_per_chunk: int,
         num_images=lambda item: len(item.images)) -> Iterator[tuple[list[list], object]]:
  """Yields (chunks, carried) per batch: `num_chunks` lists of items, and the item that overflowed the last chunk
  (it opens the next batch), or None when `items` ran out (the last, partly filled batch)."""
  if rows_per_chunk < 1 or images_per_chunk < 1:
    raise ValueError(f"budgets must be >= 1, got rows {rows_per_chunk}, images {images_per_chunk}")
  items = iter(items)
  carried = next(items, None)
  while carried is not None:
    chunks = [[] for _ in range(num_chunks)]
    for chunk in chunks:
      used_images = 0
      while carried is not None and len(chunk) < rows_per_chunk:
        n = num_images(carried)
        if n > images_per_chunk:
          raise ValueError(f"a row with {n} images cannot fit the image budget {images_per_chunk}; drop it first")
        if used_images + n > images_per_chunk:
          break
        chunk.append(carried)
        used_images += n
        carried = next(items, None)
      if carried is None:
        break
    yield chunks, carried


def assemble(chunks: Sequence[Sequence], *, rows_per_chunk: int, images_per_chunk: int, seq_len: int,
             image_size: int) -> dict:
  """Chunks of items (each with tokens/segment_ids/positions int32 [seq_len] and images uint8 [n, S, S, 3], the
  j-th image for the j-th span of its row) -> the host batch, chunks concatenated:

    tokens, segment_ids, positions  int32 [C * rows_per_chunk, seq_len]   unused rows all padding (segment 0)
    images                          uint8 [C * images_per_chunk, S, S, 3] per chunk: row-major span order, valid first
    image_valid                     bool  [C * images_per_chunk]          unused slots zero and False
  """
  num_rows, num_slots = len(chunks) * rows_per_chunk, len(chunks) * images_per_chunk
  batch = batch_spec.zeros(batch_spec.shapes(rows=num_rows, images=num_slots, seq_len=seq_len, image_size=image_size))
  for c, chunk in enumerate(chunks):
    if len(chunk) > rows_per_chunk:
      raise ValueError(f"chunk {c} has {len(chunk)} rows, budget {rows_per_chunk}")
    slot = c * images_per_chunk
    for r, item in enumerate(chunk):
      row = c * rows_per_chunk + r
      batch["tokens"][row] = item.tokens
      batch["segment_ids"][row] = item.segment_ids
      batch["positions"][row] = item.positions
      n = len(item.images)
      if slot + n > (c + 1) * images_per_chunk:
        raise ValueError(f"chunk {c} overflows its image budget {images_per_chunk}")
      if n:
        batch["images"][slot:slot + n] = item.images
        batch["image_valid"][slot:slot + n] = True
      slot += n
  return batch
