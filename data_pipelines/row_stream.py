"""This host's rows in a fixed order that is a function of a few integers: the exact-resume design.

Documents. Per source and epoch e, a permutation of its N documents (sampling.Permutation keyed (seed, source, e),
the same on every host). Host h of P reads the epoch's global positions p = base + h + k * P, k = 0, 1, ...
(base = 0 except after a change of host count, see `restore`): no document is on two hosts, together they cover
the epoch.

Blocks. A host's documents k = 0, 1, ... are cut into blocks of B (config.data.block_docs). The rows of a block are
built by the source's row builder (data_pipelines/rows.py) with one generator keyed (seed, source, epoch, base, P,
h, block), so they are a pure function of those integers. LAION pairs and OBELICS windows pack within a block: the
last row of a block may be part empty (one per B documents, ~0.5% padding at B = 512).

Mixture. Row i of the host comes from the source chosen by sampling.uniform(seed, "mixture", P, h, i) against the
configured weights; each source keeps its own epochs.

State (flat ints). Per source `<name>/epoch, /base, /block, /row`: the next row of that source is row `row` of that
block; restoring replays the block's first `row` rows (tokenisation only: images are decoded later, by the
pipeline) and goes on. Plus `mixture_rows` (i), the layout (`hosts`, `host`, `block_docs`) and the skip counts of
row building (`skipped/<source>/<reason>`).
"""
import dataclasses
from typing import Callable, Iterator

from absl import logging
import numpy as np

from data_pipelines import rows as rows_lib
from data_pipelines import sampling

STATE_VERSION = 1
_READ_AHEAD = 16  # documents fetched per data-source call: random reads batched, bounded memory


@dataclasses.dataclass
class Cursor:
  epoch: int = 0
  base: int = 0   # first global position of this epoch the current host layout reads from
  block: int = 0  # block of this host's documents: k in [block * B, (block + 1) * B)
  row: int = 0    # rows of that block already taken


@dataclasses.dataclass
class RowItem:
  """A row with where it came from. `key` identifies it uniquely (per-image augmentation is keyed on it); `state` is
  the whole stream's state just before it (what a checkpoint holds if this row is carried to the next batch)."""
  row: rows_lib.Row
  source: str
  epoch: int
  key: tuple
  state: dict


def row_builder(source: str, tokenizer, *, seq_len: int, patches_per_image: int,
                max_images: int | None = None) -> Callable:
  """-> build(documents, rng, counts) -> Iterator[Row] for one source (rows.py), counting what it skips.

  `max_images` (None: no limit) caps the images of every row; rows are a function of it, so a resumed run must pass
  the same value to replay a block's rows exactly.
  """
  kwargs = dict(seq_len=seq_len, patches_per_image=patches_per_image)
  if source == "mmc4":
    # MMC4 already keeps only the first MAX_IMAGES_PER_DOC images of a document; a lower cap keeps fewer of them.
    mmc4_max = rows_lib.MAX_IMAGES_PER_DOC if max_images is None else min(rows_lib.MAX_IMAGES_PER_DOC, max_images)

    def build(docs, rng, counts):
      for doc in docs:
        row = rows_lib.mmc4_row(doc, rng, tokenizer, max_images=mmc4_max, **kwargs)
        if row is None:  # no image left after the similarity filter (docs/method.md section 2)
          counts["no_image_kept"] = counts.get("no_image_kept", 0) + 1
        else:
          yield row
    return build
  if source == "laion":
    return lambda docs, rng, counts: rows_lib.laion_rows(docs, rng, tokenizer, max_images=max_images, **kwargs)
  if source == "obelics":
    return lambda docs, rng, counts: rows_lib.obelics_rows(docs, rng, tokenizer, max_row_images=max_images,
                                                           counts=counts, **kwargs)
  raise ValueError(f"no row builder for source {source!r}")


def _malformed(doc: dict) -> str | None:
  """Why rows.py could not read this document, or None."""
  try:
    for text in doc["texts"]:
      bytes(text).decode("utf-8") if isinstance(text, (bytes, np.bytes_)) else str(text)
  except UnicodeDecodeError:
    return "invalid_utf8"
  if not len(doc["images"]) == len(doc["image_text_index"]) == len(doc["image_sim"]):
    return "malformed_document"
  return None


class SourceStream:
  """One source's rows on this host, block by block, epoch after epoch."""

  def __init__(self, name: str, documents, build_rows: Callable, *, seed: int, host: int, hosts: int,
               block_docs: int):
    if len(documents) < hosts:
      raise ValueError(f"{name} has {len(documents)} documents, fewer than the {hosts} hosts reading it.")
    self.name, self.documents, self.num_docs = name, documents, len(documents)
    self._build_rows = build_rows
    self.seed, self.host, self.hosts, self.block_docs = seed, host, hosts, block_docs
    self.cursor = Cursor()
    self.counts = {}            # reason -> documents skipped by row building, cumulative
    self._rows = None           # the current block's row iterator
    self._block_counts = {}     # what the builder counted in this block, and how much of it was already taken
    self._taken_counts = {}
    self._permutation = None
    self._rows_this_epoch = 0

  # -- positions ------------------------------------------------------------------------------------------------
  def _local_docs(self, base: int) -> int:
    """How many documents of the epoch, from global position `base` on, this host reads."""
    return max(0, -(-(self.num_docs - base - self.host) // self.hosts))

  def block_indices(self, cursor: Cursor) -> np.ndarray:
    """Document indices of a block, in reading order."""
    if self._permutation is None or self._permutation[0] != cursor.epoch:
      self._permutation = (cursor.epoch, sampling.Permutation(self.num_docs, self.seed, self.name, cursor.epoch))
    start = cursor.block * self.block_docs
    k = np.arange(start, min(start + self.block_docs, self._local_docs(cursor.base)))
    return self._permutation[1](cursor.base + self.host + k * self.hosts)

  def _documents(self, indices) -> Iterator[dict]:
    """The block's documents in order; ones the row builders would choke on (the build never writes them, but
    storage can rot) are skipped and counted instead of stopping training."""
    for i in range(0, len(indices), _READ_AHEAD):
      for doc in self.documents.get(indices[i:i + _READ_AHEAD]):
        reason = _malformed(doc)
        if reason:
          self._block_counts[reason] = self._block_counts.get(reason, 0) + 1
        else:
          yield doc

  def _open_block(self):
    c = self.cursor
    rng = sampling.generator("rows", self.seed, self.name, c.epoch, c.base, self.hosts, self.host, c.block)
    self._block_counts, self._taken_counts = {}, {}
    self._rows = iter(self._build_rows(self._documents(self.block_indices(c)), rng, self._block_counts))

  def _take_counts(self, keep: bool):
    for reason, n in self._block_counts.items():
      new = n - self._taken_counts.get(reason, 0)
      if new and keep:
        self.counts[reason] = self.counts.get(reason, 0) + new
      self._taken_counts[reason] = n

  def _next_block(self):
    c = self.cursor
    c.block, c.row = c.block + 1, 0
    if c.block * self.block_docs >= self._local_docs(c.base):
      if c.base == 0 and self._rows_this_epoch == 0:
        raise RuntimeError(f"{self.name}: a whole epoch gave no row on host {self.host} (skipped so far: "
                           f"{self.counts}); every document was filtered out.")
      c.epoch, c.base, c.block, self._rows_this_epoch = c.epoch + 1, 0, 0, 0
    self._rows = None

  # -- rows -----------------------------------------------------------------------------------------------------
  def next(self) -> tuple[rows_lib.Row, int, tuple]:
    """-> (row, epoch, key) of the next row; key = its (epoch, base, hosts, host, block, row index) position."""
    while True:
      if self._rows is None:
        self._open_block()
      row = next(self._rows, None)
      self._take_counts(keep=True)
      if row is not None:
        c = self.cursor
        key = (c.epoch, c.base, self.hosts, self.host, c.block, c.row)
        c.row += 1
        self._rows_this_epoch += 1
        return row, c.epoch, key
      self._next_block()

  def set_cursor(self, cursor: Cursor):
    """Continue at `cursor`: replay its block's first `cursor.row` rows without counting their skips again."""
    self.cursor = dataclasses.replace(cursor)
    self._rows_this_epoch = 1 if (cursor.block or cursor.row or cursor.base) else 0
    self._open_block()
    for taken in range(cursor.row):
      if next(self._rows, None) is None:  # the block now makes fewer rows: seq_len, patches or the data changed
        logging.warning("%s: saved position %s is past the end of its block (%d rows now); continuing with the "
                        "next block. Did config.data.seq_len, the patch count or the dataset change since the "
                        "checkpoint?", self.name, cursor, taken)
        self._next_block()
        break
    self._take_counts(keep=False)


class RowStream:
  """The host's rows: per row, a source by the mixture, then that source's next row."""

  def __init__(self, sources: list[SourceStream], weights: list[float], *, seed: int, host: int, hosts: int,
               block_docs: int):
    self.sources, self.weights = sources, list(weights)
    self.seed, self.host, self.hosts, self.block_docs = seed, host, hosts, block_docs
    self.mixture_rows = 0

  def __iter__(self):
    return self

  def __next__(self) -> RowItem:
    state = self.state()
    u = sampling.uniform(self.seed, "mixture", self.hosts, self.host, self.mixture_rows)
    source = self.sources[sampling.choose(self.weights, u)]
    row, epoch, key = source.next()
    self.mixture_rows += 1
    return RowItem(row=row, source=source.name, epoch=epoch, key=(source.name,) + key, state=state)

  def state(self) -> dict[str, int]:
    state = dict(version=STATE_VERSION, hosts=self.hosts, host=self.host, block_docs=self.block_docs,
                 mixture_rows=self.mixture_rows)
    for s in self.sources:
      c = s.cursor
      state.update({f"{s.name}/epoch": c.epoch, f"{s.name}/base": c.base, f"{s.name}/block": c.block,
                    f"{s.name}/row": c.row, f"{s.name}/num_docs": s.num_docs})
      state.update({f"skipped/{s.name}/{reason}": n for reason, n in s.counts.items()})
    return state

  def set_state(self, state: dict):
    """Continue from a state of this same layout (see `restore` for the saved states of all hosts)."""
    for key in ("hosts", "host", "block_docs"):
      if int(state[key]) != getattr(self, key):
        raise ValueError(f"state for {key}={state[key]} given to a stream with {key}={getattr(self, key)}")
    self.mixture_rows = int(state["mixture_rows"])
    for s in self.sources:
      if f"{s.name}/epoch" not in state:
        logging.warning("No saved position for %s (a source added since the checkpoint): it starts afresh.", s.name)
        continue
      if int(state[f"{s.name}/num_docs"]) != s.num_docs:
        logging.warning("%s had %d documents at save time and has %d now: positions continue, but the order is "
                        "not the saved run's.", s.name, int(state[f"{s.name}/num_docs"]), s.num_docs)
      prefix = f"skipped/{s.name}/"
      s.counts = {k[len(prefix):]: int(v) for k, v in state.items() if k.startswith(prefix)}
      s.set_cursor(Cursor(*(int(state[f"{s.name}/{f}"]) for f in ("epoch", "base", "block", "row"))))


def restore(saved: list[dict], *, host: int, hosts: int, block_docs: int) -> dict:
  """The state this host continues from, given the states all hosts saved (index = process index at save time).

  Same layout: this host's own saved state, exactly. A different number of hosts (or block size): per source, the
  new hosts continue the lowest epoch any old host was in, from global position g = the lowest block start of the
  old hosts in that epoch (every position below g was read by its owner). Nothing is skipped; documents at or past
  g that faster hosts had already read are read again. The mixture counter restarts; skip counts go to host 0.
  """
  if not saved:
    raise ValueError("set_state needs the saved states of all hosts, got none")
  old_hosts = int(saved[0]["hosts"])
  same = (old_hosts == hosts == len(saved) and all(int(s["host"]) == i for i, s in enumerate(saved))
          and all(int(s["block_docs"]) == block_docs for s in saved))
  if same:
    return dict(saved[host])
  if len(saved) != old_hosts:
    raise ValueError(f"got {len(saved)} saved states from a run with {old_hosts} hosts: all are needed")
  logging.warning("Data state saved by %d hosts (block_docs %s) restored on %d hosts (block_docs %d): continuing "
                  "from each source's slowest host; documents read after that by faster hosts are read again.",
                  old_hosts, sorted({int(s["block_docs"]) for s in saved}), hosts, block_docs)
  state = dict(version=STATE_VERSION, hosts=hosts, host=host, block_docs=block_docs, mixture_rows=0)
  names = sorted({k.rsplit("/", 1)[0] for s in saved for k in s if k.endswith("/epoch")})
  for name in names:
    present = [s for s in saved if f"{name}/epoch" in s]
    epoch = min(int(s[f"{name}/epoch"]) for s in present)
    g = min(int(s[f"{name}/base"]) + int(s["host"]) + int(s[f"{name}/block"]) * int(s["block_docs"]) * old_hosts
            for s in present if int(s[f"{name}/epoch"]) == epoch)
    state.update({f"{name}/epoch": epoch, f"{name}/base": g, f"{name}/block": 0, f"{name}/row": 0,
                  f"{name}/num_docs": int(present[0][f"{name}/num_docs"])})
  if host == 0:
    for s in saved:
      for k, v in s.items():
        if k.startswith("skipped/"):
          state[k] = state.get(k, 0) + int(v)
  return state
