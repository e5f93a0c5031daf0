"""Generation: next-token perplexity of the full model on held-out interleaved rows.

Rows come from data_pipelines.rows, the same builders as training:
- dataset "demo" (or a .npz in its layout): every held-out image with its caption is a LAION-style pair
  (`<s> span caption </s>` or `<s> caption span </s>`, p = 0.5), packed into rows by laion_rows;
- dataset "lcl_mmc4" / "lcl_laion" / "lcl_obelics": the built TFDS documents of `split` (the builders' held-out split
  is "validation") in data_dir, through mmc4_row / laion_rows / obelics_rows.
Placement draws come from a generator seeded by `seed`, so every run scores the same rows. Rows are packed into
batches that follow the training contract (method.md section 6) over the mesh's data shards; a short last batch is
filled with all-padding rows, which have no targets, so every target counts exactly once.
Perplexity = exp(mean next-token NLL) over the targets of losses.generation_targets (text, `<boi>`, `</s>`).
Scalars: perplexity, nll, num_targets, num_rows.
"""
import math

import numpy as np

from data_pipelines import augment, batch_spec
from lcl_jax import losses
from lcl_jax.evaluators import base, datasets

LCL_SOURCES = {"lcl_mmc4": "mmc4", "lcl_laion": "laion", "lcl_obelics": "obelics"}


def pack_rows(rows, *, num_chunks: int, rows_per_chunk: int, images_per_chunk: int, image_size: int):
  """Rows (data_pipelines.rows.Row) -> host batches of the training contract, in order, nothing dropped.

  A chunk takes rows until its row or image budget would overflow; a batch is `num_chunks` chunks; the last batch is
  completed with empty chunks. Images go through the pipeline's eval transform (augment.load).
  """
  chunks, current = [], []
  for row in rows:
    if len(row.images) > images_per_chunk:
      raise ValueError(f"a row holds {len(row.images)} images; images_per_chunk is {images_per_chunk}")
    if current and (len(current) == rows_per_chunk
                    or sum(len(r.images) for r in current) + len(row.images) > images_per_chunk):
      chunks.append(current)
      current = []
    current.append(row)
    if len(chunks) == num_chunks:
      yield _batch(chunks, rows_per_chunk, images_per_chunk, image_size)
      chunks = []
  if current:
    chunks.append(current)
  if chunks:
    yield _batch(chunks + [[]] * (num_chunks - len(chunks)), rows_per_chunk, images_per_chunk, image_size)


def _batch(chunks, rows_per_chunk, images_per_chunk, image_size):
  seq_len = next(len(r.tokens) for chunk in chunks for r in chunk)
  c = len(chunks)
  tokens = np.zeros((c * rows_per_chunk, seq_len), np.int32)   # pad id 0, segment 0: no targets
  segment_ids = np.zeros_like(tokens)
  positions = np.zeros_like(tokens)
  images = np.zeros((c * images_per_chunk, image_size, image_size, 3), np.uint8)
  image_valid = np.zeros((c * images_per_chunk,), bool)
  for i, chunk in enumerate(chunks):
    slot = i * images_per_chunk
    for j, row in enumerate(chunk):
      r = i * rows_per_chunk + j
      tokens[r], segment_ids[r], positions[r] = row.tokens, row.segment_ids, row.positions
      for data in row.images:   # the chunk's j-th image span owns its j-th image slot
        images[slot] = augment.load(data, image_size, None)
        image_valid[slot] = True
        slot += 1
  return dict(tokens=tokens, segment_ids=segment_ids, positions=positions, images=images, image_valid=image_valid)


class Perplexity(base.Evaluator):
  DEFAULTS = dict(
      split="validation",   # TFDS split of an lcl_* source (ignored by .npz sets)
      seq_len=0,            # row length; 0 -> config.data.seq_len
      rows_per_batch=0,     # global rows per device call; 0 -> the training micro-batch's
      images_per_batch=0,   # global image slots per call (raised to fit the fullest row); 0 -> training's
      seed=0,               # placement draws (image before / after its text)
  )

  def prepare(self):
    if self.spec.dataset in LCL_SOURCES:
      self._documents()
    else:
      self.eval_set()

  def _documents(self):
    """The built documents of `split` (a tf.data.Dataset; opening it checks they exist)."""
    from data_pipelines import build  # pylint: disable=import-outside-toplevel
    from data_pipelines import demo  # pylint: disable=import-outside-toplevel
    data_dir = demo.resolve(self.spec.data_dir or self.context.config.data.data_dir, "data_dir")
    ds = build.load_documents(LCL_SOURCES[self.spec.dataset], data_dir, self.spec.split)
    return ds.take(self.spec.max_examples) if self.spec.max_examples else ds

  def rows(self):
    from data_pipelines import rows as rows_lib  # pylint: disable=import-outside-toplevel
    config, spec = self.context.config, self.spec
    kw = dict(seq_len=spec.seq_len or config.data.seq_len,
              patches_per_image=batch_spec.patches_per_image(config.model.vit))
    rng, tokenizer = np.random.default_rng(spec.seed), self.context.tokenizer
    if spec.dataset in LCL_SOURCES:
      return list(self._document_rows(rows_lib, LCL_SOURCES[spec.dataset], rng, tokenizer, kw))
    pairs = []
    for batch in self.eval_set().batches(256):
      for image, caps in zip(batch["images"], batch["captions"]):
        pairs.append(dict(doc_id=str(len(pairs)), texts=caps[:1], images=[datasets.encode_png(image)],
                          image_text_index=[0]))
    return list(rows_lib.laion_rows(pairs, rng, tokenizer, **kw))

  def _document_rows(self, rows_lib, source, rng, tokenizer, kw):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    docs = tfds.as_numpy(self._documents())
    if source == "mmc4":
      for doc in docs:
        row = rows_lib.mmc4_row(doc, rng, tokenizer, **kw)
        if row is not None:
          yield row
    elif source == "laion":
      yield from rows_lib.laion_rows(docs, rng, tokenizer, **kw)
    else:
      yield from rows_lib.obelics_rows(docs, rng, tokenizer, **kw)

  def _nll(self, params, batch):
    out = self.context.model.apply({"params": params}, batch, num_chunks=self.context.runner.num_shards)
    loss, m = losses.next_token_loss(out["logits"], batch["tokens"], batch["segment_ids"],
                                     dict(self.context.config.model.special_tokens))
    return dict(nll_sum=loss * m["num_text_targets"], count=m["num_text_targets"])

  def run(self, params, step):
    del step
    config, runner = self.context.config, self.context.runner
    rows = self.rows()
    if not rows:
      raise ValueError(f"config.evals.{self.name}: no rows (empty set or split {self.spec.split!r}).")
    shards = runner.num_shards
    accum = config.optim.grad_accum_steps
    rows_per_chunk = max(1, -(-(self.spec.rows_per_batch or config.data.rows_per_batch // accum) // shards))
    images_per_chunk = max(-(-(self.spec.images_per_batch or config.data.images_per_batch // accum) // shards),
                           max(len(r.images) for r in rows))
    params = runner.on_mesh(params)
    total, count = 0.0, 0.0
    for batch in pack_rows(rows, num_chunks=shards, rows_per_chunk=rows_per_chunk, images_per_chunk=images_per_chunk,
                           image_size=config.model.vit.image_size):
      out = runner.call(self._nll, params, batch)
      total += float(out["nll_sum"])
      count += float(out["count"])
    nll = total / max(count, 1.0)
    return base.EvalResult(scalars=dict(perplexity=math.exp(nll), nll=nll, num_targets=count,
                                        num_rows=float(len(rows))))
