"""The model's towers as sharded, batched functions of host arrays, and the ranking math evaluators share.

Sharded like training: every batch is padded to a fixed size that is a multiple of the data shards (one compile,
no ragged last batch), split over the mesh's data axes, and only the first `n` (the real examples) of each output
come back. Outputs are replicated, so every host reads all of them (multi-host evaluation needs no gather).
"""
import contextlib
from typing import Callable, Iterable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from lcl_jax import sharding


class ShardedRunner:
  """Runs `fn(params, batch) -> dict of [b, ...]` over host batches on the mesh."""

  def __init__(self, mesh, rules):
    self.mesh, self.rules = mesh, rules
    self.num_shards = sharding.num_data_shards(mesh)
    self._in = sharding.data_sharding(mesh)
    self._out = NamedSharding(mesh, P())
    self._jitted = {}

  def padded_size(self, batch_size: int) -> int:
    return -(-batch_size // self.num_shards) * self.num_shards

  @contextlib.contextmanager
  def context(self):
    # The model's logical constraints need the mesh and rules active, as in training.
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def on_mesh(self, params):
    """Params already on this mesh (the train state) stay where they are; others are replicated onto it."""
    devices = set(self.mesh.devices.flat)
    leaves = jax.tree.leaves(params)
    if all(isinstance(x, jax.Array) and x.sharding.device_set == devices for x in leaves):
      return params
    return jax.device_put(params, self._out)

  def _global(self, x: np.ndarray):
    # Every host holds the whole padded batch; each device takes its own slice (explicit host -> device copy).
    return jax.make_array_from_callback(x.shape, self._in, lambda index: x[index])

  def call(self, fn: Callable, params, batch: dict) -> dict:
    """fn(params, batch) on one host batch whose leading dims already divide into the data shards -> host outputs.

    `params` must already be on the mesh (`on_mesh`); one jit per `fn`, so callers keep `fn` fixed.
    """
    if fn not in self._jitted:
      self._jitted[fn] = jax.jit(fn, out_shardings=self._out)
    with self.context():
      out = self._jitted[fn](params, {k: self._global(np.asarray(v)) for k, v in batch.items()})
      return jax.device_get(out)

  def map(self, fn: Callable, params, batches: Iterable[dict], batch_size: int) -> dict:
    """Concatenated outputs for every real example of `batches` (host dicts of arrays with <= batch_size rows)."""
    size = self.padded_size(batch_size)
    params = self.on_mesh(params)
    outputs = []
    for batch in batches:
      n = len(next(iter(batch.values())))
      if not 0 < n <= size:
        raise ValueError(f"batch of {n} examples for a padded batch size of {size}")
      out = self.call(fn, params, {k: _pad(np.asarray(v), size) for k, v in batch.items()})
      outputs.append({k: v[:n] for k, v in out.items()})
    if not outputs:
      raise ValueError("the evaluation set is empty")
    return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  """Zero rows after the real ones; their outputs are computed and then dropped, never counted."""
  if len(x) == size:
    return x
  return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


class Encoders:
  """Image and text towers of an LCL model (or any module with `encode_images` and `context_vectors`)."""

  def __init__(self, model, runner: ShardedRunner):
    self.runner = runner

    def images_and_patches(params, batch):
      z, v = model.apply({"params": params}, batch["images"], method="encode_images")  # [b, K, D_v], [b, D_e]
      return dict(v=v, gap=jnp.mean(z.astype(jnp.float32), axis=1), z=z)

    def images(params, batch):  # without z: the patch latents never leave the device
      return {k: x for k, x in images_and_patches(params, batch).items() if k != "z"}

    def texts(params, batch):
      t = model.apply({"params": params}, batch["tokens"], batch["segment_ids"], batch["positions"],
                      batch["boi_position"], method="context_vectors")
      return dict(t=t)

    self._images, self._images_and_patches, self._texts = images, images_and_patches, texts

  def images(self, params, batches: Iterable[dict], batch_size: int, *, patches: bool = False,
             keep: Optional[Callable[[dict], None]] = None) -> dict:
    """-> dict(v [N, D_e], gap [N, D_v] (mean patch latent), z [N, K, D_v] if patches) for every image of the set.

    `keep(batch)` sees each host batch (labels, captions, pictures to draw) as it streams past.
    """
    def image_batches():
      for batch in batches:
        if keep is not None:
          keep(batch)
        yield dict(images=batch["images"])
    fn = self._images_and_patches if patches else self._images
    return self.runner.map(fn, params, image_batches(), batch_size)

  def texts(self, params, rows: dict, batch_size: int) -> np.ndarray:
    """prompt_rows(...) -> t [M, D_e]."""
    m = len(rows["tokens"])
    batches = ({k: v[s:s + batch_size] for k, v in rows.items()} for s in range(0, m, batch_size))
    return self.runner.map(self._texts, params, batches, batch_size)["t"]


def prompt_rows(tokenizer, texts, text_len: int) -> dict:
  """Texts -> rows `<s> text <boi>` + padding: tokens / segment_ids / positions int32 [M, text_len] and the
  `<boi>` index [M] (docs/method.md section 7: the text vector is t at that `<boi>`). Long texts keep their start."""
  m = len(texts)
  tokens = np.full((m, text_len), tokenizer.pad_id, np.int32)
  segment_ids = np.zeros((m, text_len), np.int32)
  positions = np.zeros((m, text_len), np.int32)
  boi_position = np.zeros((m,), np.int32)
  for i, text in enumerate(texts):
    ids = [tokenizer.bos_id] + list(tokenizer.encode(text))[:text_len - 2] + [tokenizer.boi_id]
    tokens[i, :len(ids)] = ids
    segment_ids[i, :len(ids)] = 1
    positions[i, :len(ids)] = np.arange(len(ids))
    boi_position[i] = len(ids) - 1
  return dict(tokens=tokens, segment_ids=segment_ids, positions=positions, boi_position=boi_position)


def l2_normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def top_k(queries: np.ndarray, keys: np.ndarray, k: int, block: int = 1024) -> tuple:
  """Best `k` keys per query by dot product, best first -> (indices int [Q, k], scores [Q, k]).

  In blocks of queries, so COCO-sized sets (25k captions x 5k images) never hold the full score matrix. Ties keep
  the lower key index first (stable sort), so the answer is deterministic.
  """
  k = min(k, len(keys))
  idx, scores = [], []
  for s in range(0, len(queries), block):
    sim = queries[s:s + block] @ keys.T
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    idx.append(order)
    scores.append(np.take_along_axis(sim, order, axis=1))
  return np.concatenate(idx), np.concatenate(scores)
