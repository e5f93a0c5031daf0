"""Generation: next-token perplexity of the full model on held-out interleaved rows.

Rows come from training's row builders (data_pipelines.row_stream.row_builder over data_pipelines.rows):
- dataset "demo" (or a .npz in its layout): every held-out image with its caption is a LAION-style pair
  (`<s> span caption </s>` or `<s> caption span </s>`, p = 0.5), packed into rows by laion_rows;
- dataset "lcl_mmc4" / "lcl_laion" / "lcl_obelics": the built TFDS documents of `split` (the builders' held-out split
  is "validation") in data_dir, through mmc4_row / laion_rows / obelics_rows.
Placement draws come from a generator seeded by `seed`, so every run scores the same rows. Rows are packed by the
pipeline's chunking (pack, assemble) into batches of the training contract (docs/method.md section 6) over the mesh's
data shards; a short last batch is filled with all-padding rows, which have no targets, so every target counts
exactly once.
Perplexity = exp(mean next-token NLL) over the targets of losses.generation_targets (text, `<boi>`, `</s>`).
Scalars: perplexity, nll, num_targets, num_rows.
"""
import dataclasses
import itertools
import math

import numpy as np

from data_pipelines import augment, batch_spec, chunking, row_stream
from lcl_jax import losses
from lcl_jax.evaluators import base, datasets

LCL_SOURCES = {"lcl_mmc4": "mmc4", "lcl_laion": "laion", "lcl_obelics": "obelics"}


def pack_rows(rows, *, num_chunks: int, rows_per_chunk: int, images_per_chunk: int, image_size: int):
  """Rows (data_pipelines.rows.Row) -> host batches of the training contract, in order, nothing dropped: the
  pipeline's own packing (chunking.pack: the row that would overflow a chunk's budget opens the next) and arrays
  (chunking.assemble), its images through the pipeline's eval transform (augment.load); the last batch is completed
  with empty chunks, whose all-padding rows have no targets."""
  rows = iter(rows)
  first = next(rows, None)
  if first is None:
    return
  decoded = (dataclasses.replace(row, images=[augment.load(data, image_size, None) for data in row.images])
             for row in itertools.chain([first], rows))
  for chunks, _ in chunking.pack(decoded, num_chunks=num_chunks, rows_per_chunk=rows_per_chunk,
                                 images_per_chunk=images_per_chunk):
    yield chunking.assemble(chunks, rows_per_chunk=rows_per_chunk, images_per_chunk=images_per_chunk,
                            seq_len=len(first.tokens), image_size=image_size)


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
    """The held-out rows, built by training's row builder for the source (row_stream.row_builder, no image cap)."""
    config, spec = self.context.config, self.spec
    source = LCL_SOURCES.get(spec.dataset, "laion")
    build = row_stream.row_builder(source, self.context.tokenizer, seq_len=spec.seq_len or config.data.seq_len,
                                   patches_per_image=batch_spec.patches_per_image(config.model.vit))
    if spec.dataset in LCL_SOURCES:
      import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
      docs = tfds.as_numpy(self._documents())
    else:
      docs = []
      for batch in self.eval_set().batches(256):
        for image, caps in zip(batch["images"], batch["captions"]):
          docs.append(dict(doc_id=str(len(docs)), texts=caps[:1], images=[datasets.encode_png(image)],
                           image_text_index=[0]))
    return list(build(docs, np.random.default_rng(spec.seed), {}))

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
