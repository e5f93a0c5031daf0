"""The batch contract (docs/method.md section 6) in one place: the shapes and dtypes of a batch, and K. numpy only.

  tokens, segment_ids, positions  int32 [B, L]          B rows of L = config.data.seq_len tokens
  images                          uint8 [N, S, S, 3]    N image slots, S = config.model.vit.image_size
  image_valid                     bool  [N]

A step of C chunks (data shards x gradient-accumulation micro-batches) has B = C * (config.data.rows_per_batch // C)
rows and N = C * (config.data.images_per_batch // C) slots; a host holds C / P of those chunks, a micro-batch
C / accumulation steps. The training loop, the pipeline, the evaluators, the benchmarks and the tests all take their
shapes from here.
"""
import numpy as np

FIELDS = ("tokens", "segment_ids", "positions", "images", "image_valid")


def patches_per_image(vit) -> int:
  """K: `<img>` placeholders per image span, (image_size // patch_size) ** 2. `vit` is config.model.vit or the
  same section as a plain dict (an exported artefact's)."""
  return (int(vit["image_size"]) // int(vit["patch_size"])) ** 2


def shapes(*, rows: int, images: int, seq_len: int, image_size: int) -> dict:
  """{field: (shape, numpy dtype)} of a batch of `rows` rows and `images` image slots."""
  text = ((rows, seq_len), np.dtype(np.int32))
  return dict(tokens=text, segment_ids=text, positions=text,
              images=((images, image_size, image_size, 3), np.dtype(np.uint8)),
              image_valid=((images,), np.dtype(np.bool_)))


def per_chunk(config, num_chunks: int) -> tuple[int, int]:
  """(rows, image slots) of one chunk when a step's budgets are cut into `num_chunks` chunks."""
  return config.data.rows_per_batch // num_chunks, config.data.images_per_batch // num_chunks


def batch_spec(config, num_chunks: int = 1, *, chunks: int | None = None) -> dict:
  """{field: (shape, dtype)} of `chunks` chunks (default all `num_chunks`: the global step) of a config's batch."""
  rows, images = per_chunk(config, num_chunks)
  n = num_chunks if chunks is None else chunks
  return shapes(rows=n * rows, images=n * images, seq_len=int(config.data.seq_len),
                image_size=int(config.model.vit.image_size))


def smallest(model_config) -> dict:
  """The smallest batch a model of this config runs on: one row holding one image span, one image slot (for
  shape inference; parameter shapes do not depend on the batch)."""
  return shapes(rows=1, images=1, seq_len=patches_per_image(model_config["vit"]) + 2,
                image_size=int(model_config["vit"]["image_size"]))


def zeros(spec: dict) -> dict:
  """An all-padding batch of a spec: no segment, no valid image (what unused rows and slots hold)."""
  return {name: np.zeros(shape, dtype) for name, (shape, dtype) in spec.items()}
