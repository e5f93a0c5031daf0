"""Documents -> interleaved token rows (docs/method.md sections 1 and 2).

Plain, seeded functions of documents: numpy only, no tensorflow, so they run the same on a host feeding an
accelerator and in a unit test. A document is the dict of data_pipelines/readers/schema.py (`doc_id, source, texts,
images, image_text_index, image_sim, placement`), with python or numpy values alike (TFDS hands back `bytes`,
`np.bytes_` and `np.ndarray`).

A tokenizer here is anything with `encode(str) -> list[int]` and the special ids `pad_id bos_id eos_id boi_id
eoi_id img_id` (data_pipelines.tokenizer.Tokenizer, or a tiny fake in tests).

Joining sentences: each text piece is encoded on its own and the id lists are concatenated. With SentencePiece's
default dummy prefix every piece starts with a word boundary ("▁"), so this equals encoding the sentences joined by
one space, while each piece is tokenized exactly once and images can sit between any two pieces.

Randomness: every draw (which image per sentence, before/after) comes from the `numpy.random.Generator` passed in,
in document order, so the same generator state gives the same rows. Placement is drawn every time a document is
turned into a row, never stored (the paper redraws it on every read).
"""
import dataclasses
from typing import Iterable, Iterator

import numpy as np

# Default MMC4 filters (docs/method.md section 2; the paper and the authors' code).
MMC4_SIM_THRESHOLD = 0.24
MAX_IMAGES_PER_DOC = 6

# The values of data_pipelines/readers/schema.py, repeated so that this module needs no tensorflow (importing the
# readers package imports it); tests/test_data_rows.py checks they agree.
PLACEMENT_RANDOM = 0  # image before or after its matched text, p = 0.5 each, drawn at row time (MMC4, LAION)
PLACEMENT_FIXED = 1   # image precedes text piece `image_text_index` (OBELICS keeps the page order)


@dataclasses.dataclass
class Row:
  """One training row. The j-th image span in `tokens` belongs to `images[j]`."""
  tokens: np.ndarray       # int32 [seq_len]
  segment_ids: np.ndarray  # int32 [seq_len]; 0 = padding, 1, 2, ... per document / pair in the row
  positions: np.ndarray    # int32 [seq_len]; restart at 0 per segment, 0 on padding
  images: list             # list[bytes], encoded images in span order
  doc_ids: list            # list[str], the documents with tokens in this row, in order (one per segment)


# ---------------------------------------------------------------------------------------------------------------------
# Reading the document contract whatever container TFDS or a reader used.


def _as_str(value) -> str:
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8")
  return str(value)


def _as_bytes(value) -> bytes:
  if isinstance(value, str):  # never expected for images; refuse rather than guess an encoding
    raise TypeError("image bytes expected, got str")
  return bytes(value)


def _doc_fields(doc):
  """-> (doc_id, texts, images, image_text_index, image_sim, placement) as plain python values."""
  texts = [_as_str(t) for t in doc["texts"]]
  images = [_as_bytes(b) for b in doc["images"]]
  index = [int(i) for i in np.asarray(doc["image_text_index"]).reshape(-1)]
  sims = doc.get("image_sim")
  sims = [1.0] * len(images) if sims is None else [float(s) for s in np.asarray(sims).reshape(-1)]
  if not len(images) == len(index) == len(sims):
    raise ValueError(f"document {doc.get('doc_id')!r}: images, image_text_index and image_sim differ in length")
  placement = int(np.asarray(doc.get("placement", PLACEMENT_RANDOM)))
  return _as_str(doc.get("doc_id", "")), texts, images, index, sims, placement


# ---------------------------------------------------------------------------------------------------------------------
# A document as an ordered list of pieces: ("text", [ids]) or ("image", bytes).


def image_span(tokenizer, patches_per_image):
  """`<boi> <img>*K <eoi>`: the tokens of one image."""
  return [tokenizer.boi_id] + [tokenizer.img_id] * patches_per_image + [tokenizer.eoi_id]


def _pieces(texts, text_ids, images, index, placement, rng):
  """Interleaves text pieces and images; draws before/after for PLACEMENT_RANDOM (one draw per image, in order)."""
  before = [[] for _ in range(len(texts) + 1)]  # images to put before text piece j (j = len(texts): at the end)
  after = [[] for _ in range(len(texts))]
  for image, j in zip(images, index):
    if placement == PLACEMENT_FIXED:
      before[j].append(image)
    elif rng.random() < 0.5:
      before[j].append(image)
    else:
      after[j].append(image)
  pieces = []
  for j, ids in enumerate(text_ids):
    pieces += [("image", image) for image in before[j]]
    pieces.append(("text", ids))
    pieces += [("image", image) for image in after[j]]
  pieces += [("image", image) for image in before[len(texts)]]
  return pieces


def _valid_links(texts, images, index, sims, placement):
  """Drops image links outside the text list (readers drop them already; rows must never index out of range)."""
  hi = len(texts) if placement == PLACEMENT_FIXED else len(texts) - 1
  keep = [k for k, j in enumerate(index) if 0 <= j <= hi]
  return [images[k] for k in keep], [index[k] for k in keep], [sims[k] for k in keep]


def _padded_row(tokens, segment_ids, positions, images, doc_ids, seq_len, pad_id):
  n = len(tokens)
  assert n <= seq_len, (n, seq_len)
  pad = seq_len - n
  return Row(
      tokens=np.asarray(tokens + [pad_id] * pad, np.int32),
      segment_ids=np.asarray(segment_ids + [0] * pad, np.int32),
      positions=np.asarray(positions + [0] * pad, np.int32),
      images=list(images), doc_ids=list(doc_ids))


def _check_cap(name, value):
  if value is not None and value < 1:
    raise ValueError(f"{name} must be >= 1 or None, got {value}")


def _check_lengths(seq_len, patches_per_image, extra):
  """A row must hold at least one whole image span plus `extra` tokens around it."""
  if patches_per_image < 1:
    raise ValueError(f"patches_per_image must be >= 1, got {patches_per_image}")
  if seq_len < patches_per_image + 2 + extra:
    raise ValueError(f"seq_len {seq_len} cannot hold an image span of {patches_per_image + 2} tokens "
                     f"plus {extra} more")


# ---------------------------------------------------------------------------------------------------------------------
# MMC4: one document per row.


def select_mmc4_images(index, sims, rng, *, sim_threshold=MMC4_SIM_THRESHOLD, max_images=MAX_IMAGES_PER_DOC):
  """-> indices into the document's images that survive the MMC4 rules, in sentence order.

  Keeps images with sim >= threshold; when several match one sentence, one of them at random (uniformly); then the
  FIRST `max_images` in sentence order, as the authors' code does (not a random subset, not the most similar).
  """
  by_sentence = {}
  for k, (j, s) in enumerate(zip(index, sims)):
    if s >= sim_threshold:
      by_sentence.setdefault(j, []).append(k)
  chosen = []
  for j in sorted(by_sentence):
    candidates = by_sentence[j]
    chosen.append(candidates[int(rng.integers(len(candidates)))] if len(candidates) > 1 else candidates[0])
  return chosen[:max_images]


def mmc4_row(doc, rng, tokenizer, *, seq_len, patches_per_image, sim_threshold=MMC4_SIM_THRESHOLD,
             max_images=MAX_IMAGES_PER_DOC):
  """One MMC4 document -> one Row, or None when no image survives the filters (the caller counts those).

  `<s>` text-with-image-spans `</s>` then padding. Too long: the row is cut before the first image span that does
  not fit whole, or inside the first text piece that does not fit, and ends with `</s>` there, so the last token
  before padding is always `</s>` and no span is ever split. A row can end with no image when the text before the
  first image already fills it; it is kept: its text still trains the generative loss.
  """
  _check_lengths(seq_len, patches_per_image, extra=2)
  doc_id, texts, images, index, sims, placement = _doc_fields(doc)
  images, index, sims = _valid_links(texts, images, index, sims, placement)
  chosen = select_mmc4_images(index, sims, rng, sim_threshold=sim_threshold, max_images=max_images)
  if not chosen:
    return None
  text_ids = [list(tokenizer.encode(t)) for t in texts]
  pieces = _pieces(texts, text_ids, [images[k] for k in chosen], [index[k] for k in chosen], placement, rng)

  span = image_span(tokenizer, patches_per_image)
  budget = seq_len - 1  # the closing </s> always fits
  tokens, row_images = [tokenizer.bos_id], []
  for kind, value in pieces:
    room = budget - len(tokens)
    if kind == "image":
      if len(span) > room:
        break
      tokens += span
      row_images.append(value)
    else:
      tokens += value[:room]
      if len(value) > room:
        break
  tokens.append(tokenizer.eos_id)
  return _padded_row(tokens, [1] * len(tokens), list(range(len(tokens))), row_images, [doc_id], seq_len,
                     tokenizer.pad_id)


# ---------------------------------------------------------------------------------------------------------------------
# LAION-Random: (image, caption) mini documents packed into rows, one segment each.


def laion_rows(docs: Iterable, rng, tokenizer, *, seq_len, patches_per_image, max_images=None) -> Iterator[Row]:
  """Pairs -> rows. Each image with its matched text becomes `<s> span caption </s>` or `<s> caption span </s>`
  (p = 0.5 each); pairs are packed in order until the next one would not fit, or the row already holds `max_images`
  pairs (None: no limit), then the row is padded and the next row starts with that pair. Nothing is dropped; a
  caption too long for an empty row is truncated so the pair fits.
  """
  _check_lengths(seq_len, patches_per_image, extra=2)
  _check_cap("max_images", max_images)
  span = image_span(tokenizer, patches_per_image)
  max_caption = seq_len - len(span) - 2
  tokens, segments, positions, images, doc_ids = [], [], [], [], []
  for doc in docs:
    doc_id, texts, doc_images, index, _, _ = _doc_fields(doc)
    doc_images, index, _ = _valid_links(texts, doc_images, index, [1.0] * len(index), PLACEMENT_RANDOM)
    captions = {}
    for image, j in zip(doc_images, index):  # a LAION document holds one pair; more are packed the same way
      if j not in captions:
        captions[j] = list(tokenizer.encode(texts[j]))[:max_caption]
      if rng.random() < 0.5:
        pair = [tokenizer.bos_id] + span + captions[j] + [tokenizer.eos_id]
      else:
        pair = [tokenizer.bos_id] + captions[j] + span + [tokenizer.eos_id]
      # The image cap exists because a row with more images than a chunk's image budget fits no chunk and would be
      # dropped whole by the pipeline (data_pipelines/pipeline.py); a shorter row only costs padding.
      if len(tokens) + len(pair) > seq_len or (max_images is not None and len(images) >= max_images):
        yield _padded_row(tokens, segments, positions, images, doc_ids, seq_len, tokenizer.pad_id)
        tokens, segments, positions, images, doc_ids = [], [], [], [], []
      segment = (segments[-1] + 1) if segments else 1
      tokens += pair
      segments += [segment] * len(pair)
      positions += list(range(len(pair)))
      images.append(image)
      doc_ids.append(doc_id)
  if tokens:
    yield _padded_row(tokens, segments, positions, images, doc_ids, seq_len, tokenizer.pad_id)


# ---------------------------------------------------------------------------------------------------------------------
# OBELICS: documents concatenated and cut into seq_len windows.


class _Windows:
  """Fills consecutive windows of seq_len tokens; a document crossing a boundary continues as a new segment. A window
  holds at most `max_images` image spans (None: as many as fit)."""

  def __init__(self, seq_len, pad_id, max_images=None):
    self.seq_len, self.pad_id, self.max_images = seq_len, pad_id, max_images
    self.done = []
    self._reset()

  def _reset(self):
    self.tokens, self.segments, self.positions, self.images, self.doc_ids = [], [], [], [], []
    self.doc_open = False  # does the current document already have a segment in this window?
    self.segment = 0       # segment id and next position of the current document in this window
    self.position = 0

  def room(self):
    return self.seq_len - len(self.tokens)

  def flush(self):
    if self.tokens:
      self.done.append(_padded_row(self.tokens, self.segments, self.positions, self.images, self.doc_ids,
                                   self.seq_len, self.pad_id))
    self._reset()

  def start_document(self):
    self.doc_open = False

  def _append(self, ids, doc_id):
    if not self.doc_open:  # first tokens of this document in this window: a new segment, positions from 0
      self.segment += 1
      self.position = 0
      self.doc_ids.append(doc_id)
      self.doc_open = True
    n = len(ids)
    self.tokens += ids
    self.segments += [self.segment] * n
    self.positions += list(range(self.position, self.position + n))
    self.position += n

  def add_text(self, ids, doc_id):
    while ids:
      if not self.room():
        self.flush()
      take = ids[:self.room()]
      self._append(take, doc_id)
      ids = ids[len(take):]

  def add_span(self, span, image, doc_id):
    # Never straddle: pad this window, the span opens the next one. The same when the window is full of images
    # (a row over the pipeline's per-chunk image budget would be dropped whole); text may still fill it up to then.
    full = self.max_images is not None and len(self.images) >= self.max_images
    if len(span) > self.room() or full:
      self.flush()
    self._append(span, doc_id)
    self.images.append(image)


def obelics_rows(docs: Iterable, rng, tokenizer, *, seq_len, patches_per_image,
                 max_images=MAX_IMAGES_PER_DOC, max_row_images=None, counts=None) -> Iterator[Row]:
  """Documents -> consecutive seq_len windows of the concatenation of `<s> document </s>`, each its own segment.

  Documents keep their stored placement (OBELICS: fixed page order; a PLACEMENT_RANDOM document is drawn as in
  MMC4). Only documents with 1 to `max_images` images are used (docs/method.md section 2); the others are skipped and
  counted in `counts` (a dict, if given) under "no_image" / "too_many_images". An image span that would straddle a
  window boundary moves whole to the next window and the current window is padded from there; so does the next
  span once a window holds `max_row_images` spans (None: no limit; `max_images` is the per-document filter above), a
  document with more images than that simply continuing across windows. A document that continues into the next
  window continues there as a new segment with positions from 0. Nothing is dropped.
  """
  _check_lengths(seq_len, patches_per_image, extra=0)
  _check_cap("max_row_images", max_row_images)
  span = image_span(tokenizer, patches_per_image)
  windows = _Windows(seq_len, tokenizer.pad_id, max_row_images)
  for doc in docs:
    doc_id, texts, images, index, sims, placement = _doc_fields(doc)
    images, index, sims = _valid_links(texts, images, index, sims, placement)
    if not images or len(images) > max_images:
      if counts is not None:
        key = "no_image" if not images else "too_many_images"
        counts[key] = counts.get(key, 0) + 1
      continue
    text_ids = [list(tokenizer.encode(t)) for t in texts]
    windows.start_document()
    windows.add_text([tokenizer.bos_id], doc_id)
    for kind, value in _pieces(texts, text_ids, images, index, placement, rng):
      if kind == "image":
        windows.add_span(span, value, doc_id)
      else:
        windows.add_text(value, doc_id)
    windows.add_text([tokenizer.eos_id], doc_id)
    yield from windows.done
    windows.done = []
  windows.flush()
  yield from windows.done
