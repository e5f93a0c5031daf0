"""The demo corpus as plain data: which digit images go where, with which sentences and similarities.

No files are touched here (data_pipelines/demo/__init__.py writes them); every value is drawn from the Generator passed in.
An image is referred to by its index into `sklearn.datasets.load_digits()`; only training-split indices are ever
handed to these functions, so the held-out images cannot leak into documents.
"""
import dataclasses

import numpy as np

from data_pipelines.demo import text as T

# How an image relates to the text around it, with how often each happens.
PATTERNS = ("intro", "describe", "intro_describe", "caption", "group", "unrelated")
PATTERN_P = (0.22, 0.22, 0.20, 0.12, 0.10, 0.14)
# Blocks (one image, or two for "group") per document; 6 blocks with a group gives 7 images, which the
# 6-image cap of the row builder then trims.
BLOCKS = (1, 2, 3, 4, 5, 6)
BLOCKS_P = (0.08, 0.17, 0.25, 0.25, 0.15, 0.10)


@dataclasses.dataclass
class DocImage:
  index: int          # into load_digits
  matched: int        # matched_text_index
  sim: float          # matched_sim
  sim_row: list       # one similarity per sentence (the MMC4 similarity_matrix row)


@dataclasses.dataclass
class Doc:
  url: str
  sentences: list
  images: list        # list[DocImage]


class ClassPools:
  """Per digit class, the training indices in a seeded order, handed out round-robin (reused once exhausted)."""

  def __init__(self, train_indices, labels, rng):
    self._pools = [rng.permutation(train_indices[labels[train_indices] == d]).tolist() for d in range(10)]
    self._next = [0] * 10

  def take(self, digit):
    pool = self._pools[digit]
    index = pool[self._next[digit] % len(pool)]
    self._next[digit] += 1
    return int(index)


def _matched_sim(rng, related):
  if not related:
    return float(rng.uniform(0.12, 0.235))  # best sentence is a distractor: below the 0.24 threshold
  if rng.random() < 0.15:
    return float(rng.uniform(0.20, 0.26))   # CLIP noise around the threshold: some related images fall below
  return float(rng.uniform(0.25, 0.40))


def _sim_row(rng, n_sentences, matched, sim, related, same_digit):
  """A similarity_matrix row whose argmax is `matched` (MMC4 matches an image to its most similar sentence)."""
  row = []
  for j in range(n_sentences):
    if j == matched:
      row.append(sim)
      continue
    if j in related:
      lo, hi = sim - 0.08, sim - 0.01
    elif j in same_digit:
      lo, hi = 0.14, 0.22
    else:
      lo, hi = 0.02, 0.16
    hi = min(hi, sim - 0.005)
    row.append(round(float(rng.uniform(min(lo, hi - 0.01), hi)), 4))
  return row


def mmc4_document(rng, doc_number, pools, ink_of):
  """One interleaved document: opening, blocks of image-related and distractor sentences, closing."""
  sentences, mentions = [], []  # mentions[j]: the digit sentence j talks about, or None
  pending = []                  # (image index, digit, related sentence ids, distractor next to it)

  def say(text, digit=None):
    sentences.append(text)
    mentions.append(digit)
    return len(sentences) - 1

  if rng.random() < 0.8:
    say(T.fill(T.pick(rng, T.OPENINGS), rng))
  n_blocks = int(rng.choice(BLOCKS, p=BLOCKS_P))
  for block in range(n_blocks):
    for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):
      say(T.fill(T.pick(rng, T.DISTRACTORS), rng))
    pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=PATTERN_P))]
    digit = int(rng.integers(10))
    index = pools.take(digit)
    color = ink_of(index)
    if pattern == "intro":
      related = [say(T.fill(T.pick(rng, T.INTRO), rng, digit, color), digit)]
    elif pattern == "describe":
      related = [say(T.fill(T.pick(rng, T.DESCRIBE), rng, digit, color), digit)]
    elif pattern == "intro_describe":
      related = [say(T.fill(T.pick(rng, T.INTRO), rng, digit, color), digit),
                 say(T.fill(T.pick(rng, T.DESCRIBE), rng, digit, color), digit)]
    elif pattern == "caption":
      related = [say(T.fill(T.pick(rng, T.CAPTION), rng, digit, color, fig=block + 1), digit)]
    elif pattern == "group":  # two images of one digit, one sentence for both: the row builder keeps one
      related = [say(T.fill(T.pick(rng, T.GROUP), rng, digit, color), digit)]
      pending.append((index, digit, related, None))
      index = pools.take(digit)
    anchor = None
    if pattern == "unrelated":  # the image sits among sentences about something else; its best match is one
      related = []
      anchor = say(T.fill(T.pick(rng, T.DISTRACTORS), rng))
    pending.append((index, digit, related, anchor))
  if rng.random() < 0.7:
    say(T.fill(T.pick(rng, T.CLOSINGS), rng))

  images = []
  for index, digit, related, anchor in pending:
    sim = _matched_sim(rng, related)
    matched = related[int(rng.integers(len(related)))] if related else anchor
    same_digit = {j for j, m in enumerate(mentions) if m == digit}
    images.append(DocImage(index, matched, round(sim, 4),
                           _sim_row(rng, len(sentences), matched, round(sim, 4), set(related), same_digit)))
  return Doc(url=f"https://digits.demo.invalid/notes/{doc_number:05d}.html", sentences=sentences, images=images)


def laion_pair(rng, pools, ink_of):
  """-> (image index, caption, similarity): an alt text of the LAION kind, sometimes pure noise."""
  digit = int(rng.integers(10))
  index = pools.take(digit)
  if rng.random() < 0.04:
    return index, T.fill(T.pick(rng, T.LAION_NOISE), rng), round(float(rng.uniform(0.18, 0.28)), 4)
  caption = T.fill(T.pick(rng, T.LAION_CAPTIONS), rng, digit, ink_of(index))
  return index, caption, round(float(rng.uniform(0.28, 0.40)), 4)


def stratified_holdout(labels, fraction, rng):
  """-> (train indices, held-out indices), both sorted: `fraction` of every class, drawn with `rng`."""
  held = []
  for d in range(10):
    members = np.flatnonzero(labels == d)
    held += rng.permutation(members)[:int(round(fraction * len(members)))].tolist()
  held = np.sort(np.asarray(held))
  train = np.setdiff1d(np.arange(len(labels)), held)
  return train, held
