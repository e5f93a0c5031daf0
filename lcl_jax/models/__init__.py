"""Flax Linen models of lcl_jax. Never imports data, optax, orbax or tensorflow."""
import jax
import jax.numpy as jnp
import numpy as np

from lcl_jax.models.decoder import Decoder
from lcl_jax.models.lcl import LCL
from lcl_jax.models.vit import AttentionPool, ViT


def patches_per_image(model_config) -> int:
  """K: number of `<img>` placeholders per image span."""
  return (model_config.vit.image_size // model_config.vit.patch_size) ** 2


def dummy_batch(model_config, *, rows: int, images: int, seq_len: int):
  """Zero-filled batch with the contract's shapes and dtypes, for shape inference."""
  size = model_config.vit.image_size
  return dict(tokens=np.zeros((rows, seq_len), np.int32), segment_ids=np.zeros((rows, seq_len), np.int32),
              positions=np.zeros((rows, seq_len), np.int32),
              images=np.zeros((images, size, size, 3), np.uint8), image_valid=np.zeros((images,), bool))


def abstract_params(model_config, *, rows=1, images=1, seq_len=None):
  """The boxed parameter tree as ShapeDtypeStructs (no memory allocated)."""
  model = LCL(model_config)
  batch = dummy_batch(model_config, rows=rows, images=images,
                      seq_len=seq_len or patches_per_image(model_config) + 2)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), batch))["params"]


__all__ = ["LCL", "ViT", "AttentionPool", "Decoder", "patches_per_image", "dummy_batch", "abstract_params"]
