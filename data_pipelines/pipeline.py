"""TFDS documents -> this host's share of each global batch, in the layout of docs/method.md section 6.

  data = Pipeline(config, num_chunks=C, process_index=jax.process_index(), process_count=jax.process_count())
  for host_batch, metrics in data: ...      # endless; epochs roll over per source
  data.get_state()                          # small dict of ints: the state right after the last batch yielded
  data.set_state(saved_states_of_all_hosts) # continue exactly there (or, on another host count, see row_stream)

Stages, one module each:
  documents.py   random access into the built TFDS split of each source (ArrayRecord, or small TFRecord in memory)
  row_stream.py  per-epoch permutation, this host's share, blocks, mixture by weight -> rows (rows.py), with state
  augment.py     decode + OpenCLIP train transform (or the eval transform), keyed per image: on a thread pool
  chunking.py    rows -> C/P chunks under the row and image budgets, the overflowing row carried over -> arrays
  batch_stats.py rows, images, padding and tokens by kind -> the metrics

One background thread runs the stream, feeds the thread pool a window of rows ahead (decoding keeps row order), packs
and assembles batches, and keeps `config.data.prefetch_batches` of them ready. Everything a batch holds is a function
of the state of the row it starts from, so the state is a handful of integers and never the content of a buffer.

Rows that cannot be used are dropped in stream order and counted (`skipped/...` in the metrics and the state): a row
with more images than a chunk's image budget (`skipped/row_over_image_budget`; such a row fits no chunk; rows are
built capped at that budget, so this is only a safety net), a row with an image that fails to decode
(`skipped/image/<reason>`; the build validated every image, so this means corrupted storage). Documents the row
builders skip are counted per source (`skipped/lcl_mmc4/no_image_kept`, ...), and the build's own skips are reported
as constants (`skipped/build/<source>/<reason>`).
"""
import collections
import concurrent.futures
import dataclasses
import os
import queue
import threading

from absl import logging
import numpy as np

from data_pipelines.errors import DataSetupError
from data_pipelines import augment
from data_pipelines import batch_spec
from data_pipelines import batch_stats
from data_pipelines import chunking
from data_pipelines import demo
from data_pipelines import documents as documents_lib
from data_pipelines import row_stream
from data_pipelines import rows as rows_lib
from data_pipelines import sampling
from data_pipelines.tokenizer import load_tokenizer

# This many rows in a row over the image budget means the config can never feed the source: stop and say so.
_MAX_CONSECUTIVE_DROPS = 1000


@dataclasses.dataclass
class _Ready:
  """A row with its images decoded, as chunking.assemble takes it, plus what the state and metrics need."""
  tokens: np.ndarray
  segment_ids: np.ndarray
  positions: np.ndarray
  images: np.ndarray  # uint8 [n, S, S, 3]
  source: str
  epoch: int
  doc_ids: list
  state: dict         # state just before this row: stream positions and every skip count so far


def resolve_paths(data_config) -> tuple[str, str]:
  """(data_dir, tokenizer path or "clip_bpe"), with "demo" meaning the bundled demo corpus (built on first use)."""
  data_dir, tokenizer = demo.resolve(data_config.data_dir, "data_dir"), demo.resolve(data_config.tokenizer, "tokenizer")
  for key, value in (("data_dir", data_dir), ("tokenizer", tokenizer)):
    if not value:
      raise DataSetupError(f"config.data.{key} is empty: pass --config.data.{key}=PATH, or 'demo'.")
  return data_dir, tokenizer


def max_images_per_row(source: str, seq_len: int, patches: int) -> int:
  """The most image spans a row of this source can hold (LAION: pairs with an empty caption)."""
  span = patches + 2
  return {"mmc4": min(rows_lib.MAX_IMAGES_PER_DOC, (seq_len - 2) // span), "laion": seq_len // (span + 2),
          "obelics": seq_len // span}[source]


class Pipeline:
  """This host's batches; see the module docstring. `train=False` uses the eval transform (no randomness)."""

  def __init__(self, config, *, num_chunks: int, process_index: int = 0, process_count: int = 1,
               split: str = "train", train: bool = True):
    d, vit = config.data, config.model.vit
    if num_chunks < 1 or num_chunks % process_count:
      raise ValueError(f"num_chunks={num_chunks} must be a positive multiple of process_count={process_count}.")
    self.num_chunks, self.local_chunks = num_chunks, num_chunks // process_count
    self.rows_per_chunk, self.images_per_chunk = batch_spec.per_chunk(config, num_chunks)
    for key, per_chunk in (("rows_per_batch", self.rows_per_chunk), ("images_per_batch", self.images_per_chunk)):
      if per_chunk < 1:
        raise DataSetupError(f"config.data.{key}={d[key]} gives less than one per chunk over {num_chunks} chunks.")
    self.host, self.hosts = process_index, process_count
    self.seed, self.train = int(config.seed), train
    self.seq_len, self.image_size = int(d.seq_len), int(vit.image_size)
    self.patches = batch_spec.patches_per_image(vit)
    self.block_docs = int(d.get("block_docs", 512))
    self.threads = int(d.get("decode_threads", 0)) or len(os.sched_getaffinity(0))
    self.prefetch = max(1, int(d.get("prefetch_batches", 2)))

    data_dir, tokenizer_path = resolve_paths(d)
    self.tokenizer = load_tokenizer(tokenizer_path)
    if self.tokenizer.vocab_size != config.model.decoder.vocab_size:
      raise DataSetupError(f"config.model.decoder.vocab_size={config.model.decoder.vocab_size} but the tokenizer "
                           f"{tokenizer_path} (config.data.tokenizer) has {self.tokenizer.vocab_size} ids; set "
                           f"--config.model.decoder.vocab_size={self.tokenizer.vocab_size}.")
    # The model finds image spans and text by config.model.special_tokens; rows carry the tokenizer's ids. Two
    # tokenizers (SentencePiece here, CLIP BPE) place them differently, so a mismatch would train on wrong spans.
    given = self.tokenizer.special_tokens
    wanted = {role: config.model.special_tokens.get(role) for role in given}
    if wanted != given:
      raise DataSetupError(f"config.model.special_tokens has {wanted} but the tokenizer {tokenizer_path} "
                           f"(config.data.tokenizer) writes {given}; the config must use the tokenizer's ids "
                           f"(configs.common.SPECIAL_TOKENS for SentencePiece, "
                           f"data_pipelines.clip_tokenizer.SPECIAL_TOKENS for clip_bpe).")
    self.names = sorted(name for name, weight in d.sources.items() if weight > 0)
    if not self.names:
      raise DataSetupError(f"config.data.sources={dict(d.sources)} has no positive weight.")
    self.weights = [float(d.sources[name]) for name in self.names]
    self.documents = {name: documents_lib.Documents(name, data_dir, split) for name in self.names}
    self.build_skips = {f"skipped/build/{name}/{reason}": float(n) for name in self.names
                        for reason, n in self.documents[name].build_skips.items()}
    # Rows are built with at most a chunk's image budget of images: a row over it fits no chunk and would be dropped
    # whole (on 8 chunks of a runlocal config every LAION row would be). The cap is a function of the config and the
    # chunk count alone, so a resumed run on the same chunks rebuilds exactly the same rows.
    self.row_image_cap = self.images_per_chunk
    for name in self.names:
      source = documents_lib.source_of(name)
      most = max_images_per_row(source, self.seq_len, self.patches)
      if most <= self.row_image_cap:
        continue
      if source == "mmc4":  # not just packing: the images after the first `cap` of a document are no longer used
        logging.warning("%s: keeping the first %d images of each document instead of %d, the image budget per chunk "
                        "(config.data.images_per_batch=%d over %d chunks).", name, self.row_image_cap, most,
                        d.images_per_batch, num_chunks)
      else:
        logging.info("%s: rows hold at most %d images (the image budget per chunk, config.data.images_per_batch=%d "
                     "over %d chunks) instead of up to %d: more rows, more padding.", name, self.row_image_cap,
                     d.images_per_batch, num_chunks, most)

    self._stream = self._new_stream()  # ready to start from self._state; None once a thread has taken it
    self._state = dict(self._stream.state(), batches=0)
    self._worker = None
    self._logged_reasons = set()

  # -- state ----------------------------------------------------------------------------------------------------
  def _new_stream(self) -> row_stream.RowStream:
    sources = [row_stream.SourceStream(
        name, self.documents[name],
        row_stream.row_builder(documents_lib.source_of(name), self.tokenizer, seq_len=self.seq_len,
                               patches_per_image=self.patches, max_images=self.row_image_cap),
        seed=self.seed, host=self.host, hosts=self.hosts, block_docs=self.block_docs) for name in self.names]
    return row_stream.RowStream(sources, self.weights, seed=self.seed, host=self.host, hosts=self.hosts,
                                block_docs=self.block_docs)

  def get_state(self) -> dict[str, int]:
    """The state right after the last batch yielded (before the first batch: where the first will start)."""
    return {k: int(v) for k, v in self._state.items()}

  def set_state(self, hosts: list[dict]):
    """Continue from the states all hosts saved (list index = process index at save time)."""
    self._stop()
    state = row_stream.restore([dict(s) for s in hosts], host=self.host, hosts=self.hosts,
                               block_docs=self.block_docs)
    stream = self._new_stream()
    stream.set_state(state)
    self._stream = stream
    self._state = dict(stream.state(), batches=int(state.get("batches", 0)),
                       **{k: int(v) for k, v in state.items() if k.startswith("skipped/") and self._own_key(k)})

  def _own_key(self, key: str) -> bool:
    """Skip counts kept by the pipeline itself (not by a source's row building)."""
    return key.split("/")[1] not in self.names

  # -- iteration ------------------------------------------------------------------------------------------------
  def __iter__(self):
    return self

  def __next__(self) -> tuple[dict, dict]:
    batch, metrics, _ = self.next_with_info()
    return batch, metrics

  def next_with_info(self) -> tuple[dict, dict, list]:
    """Like next(), plus per row of the batch (source, doc_ids, epoch), or None for an all-padding row."""
    if self._worker is None:
      self._start()
    item = self._worker[2].get()
    if isinstance(item, BaseException):
      self._stop()
      raise item
    batch, metrics, info, state = item
    self._state = state
    return batch, metrics, info

  def close(self):
    self._stop()

  def __del__(self):
    try:
      self._stop()
    except Exception:  # pylint: disable=broad-except  # interpreter shutdown
      pass

  def _start(self):
    if self._stream is None:  # a stopped thread took the last one: continue from the last batch's state
      self._stream = self._new_stream()
      self._stream.set_state(self._state)
    stop, out = threading.Event(), queue.Queue(maxsize=self.prefetch)
    thread = threading.Thread(target=self._work, args=(self._stream, dict(self._state), stop, out), daemon=True,
                              name="data_pipeline")
    self._stream, self._worker = None, (thread, stop, out)
    thread.start()

  def _stop(self):
    if self._worker is None:
      return
    thread, stop, out = self._worker
    stop.set()
    while thread.is_alive():
      try:
        out.get(timeout=0.1)  # unblock a put
      except queue.Empty:
        pass
      thread.join(timeout=0.1)
    self._worker = None

  # -- the background thread ------------------------------------------------------------------------------------
  def _work(self, stream, state, stop, out):
    pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
    try:
      batches = int(state["batches"])
      drops = {k[len("skipped/"):]: v for k, v in state.items() if k.startswith("skipped/") and self._own_key(k)}
      ready = self._ready_rows(stream, pool, drops, stop)
      for chunks, carried in chunking.pack(ready, num_chunks=self.local_chunks, rows_per_chunk=self.rows_per_chunk,
                                           images_per_chunk=self.images_per_chunk):
        if stop.is_set():
          return
        batches += 1
        self._put(out, self._batch(chunks, dict(carried.state, batches=batches)), stop)
    except BaseException as e:  # pylint: disable=broad-except  # surfaced in the consumer's next()
      self._put(out, e, stop)
    finally:
      pool.shutdown(wait=True, cancel_futures=True)  # rows decoded ahead are dropped: the state says where to resume

  @staticmethod
  def _put(out, item, stop):
    while not stop.is_set():
      try:
        out.put(item, timeout=0.2)
        return
      except queue.Full:
        continue

  def _ready_rows(self, stream, pool, drops, stop):
    """Rows with decoded images, in stream order; drops (and counts) rows over budget or with a bad image."""
    window = collections.deque()
    lookahead = max(4 * self.threads, self.local_chunks * self.rows_per_chunk)
    consecutive = 0
    while not stop.is_set():
      while len(window) < lookahead:
        item = next(stream)
        fits = len(item.row.images) <= self.images_per_chunk
        window.append((item, pool.submit(self._decode, item) if fits else None))
      item, future = window.popleft()
      if future is None:
        consecutive += 1
        self._drop(drops, "row_over_image_budget", item)
        if consecutive >= _MAX_CONSECUTIVE_DROPS:
          raise RuntimeError(
              f"{consecutive} rows in a row hold more images than the image budget of {self.images_per_chunk} per "
              f"chunk: raise config.data.images_per_batch (now {self.images_per_chunk * self.num_chunks} over "
              f"{self.num_chunks} chunks) or use fewer chunks.")
        continue
      consecutive = 0
      images = future.result()
      if isinstance(images, str):
        self._drop(drops, f"image/{images}", item)
        continue
      row = item.row
      state = dict(item.state, **{f"skipped/{k}": v for k, v in drops.items()})
      yield _Ready(tokens=row.tokens, segment_ids=row.segment_ids, positions=row.positions, images=images,
                   source=item.source, epoch=item.epoch, doc_ids=list(row.doc_ids), state=state)

  def _drop(self, drops, reason, item):
    drops[reason] = drops.get(reason, 0) + 1
    if reason not in self._logged_reasons:
      self._logged_reasons.add(reason)
      logging.warning("Dropping a row (%s) of %s, documents %s; further ones are only counted (skipped/%s).",
                      reason, item.source, list(item.row.doc_ids)[:3], reason)

  def _decode(self, item) -> np.ndarray | str:
    """The row's images, transformed, uint8 [n, S, S, 3]; or the reason the first bad one failed."""
    size = self.image_size
    out = np.empty((len(item.row.images), size, size, 3), np.uint8)
    for j, data in enumerate(item.row.images):
      rng = sampling.generator("augment", self.seed, *item.key, j) if self.train else None
      try:
        out[j] = augment.load(data, size, rng)
      except augment.ImageError as e:
        return e.reason
    return out

  def _batch(self, chunks, state):
    batch = chunking.assemble(chunks, rows_per_chunk=self.rows_per_chunk, images_per_chunk=self.images_per_chunk,
                              seq_len=self.seq_len, image_size=self.image_size)
    info = []
    for chunk in chunks:
      info += [dict(source=r.source, doc_ids=r.doc_ids, epoch=r.epoch) for r in chunk]
      info += [None] * (self.rows_per_chunk - len(chunk))
    metrics = batch_stats.batch_stats(batch, self.tokenizer.special_tokens)
    for name in self.names:
      mine = [r for chunk in chunks for r in chunk if r.source == name]
      metrics[f"rows/{name}"] = float(len(mine))
      metrics[f"documents/{name}"] = float(sum(len(r.doc_ids) for r in mine))
      metrics[f"epoch/{name}"] = float(state[f"{name}/epoch"])
    metrics.update({k: float(v) for k, v in state.items() if k.startswith("skipped/")})
    metrics.update(self.build_skips)
    return batch, metrics, info, state
