"""Encoded image bytes -> uint8 [S, S, 3] for the ViT: a guarded decode, then the OpenCLIP transform (docs/method.md
section 5). Normalisation (CLIP mean/std) happens on the device, so images leave the host as uint8.

train: RandomResizedCrop(scale=(0.9, 1.0), ratio=(3/4, 4/3)) drawn exactly as torchvision draws it (10 tries, then
       a centre crop), resized to S x S with bicubic.
eval:  resize the short side to S (bicubic), centre crop S x S.
Both are a crop box plus one Pillow `resize(box=...)`, i.e. crop and resize fused. Pillow's bicubic antialiases when
it shrinks, as OpenCLIP's transform does (torchvision on PIL images calls the same Pillow resize).

Speed: for JPEGs much larger than needed, `draft` makes the decoder itself downscale by 2, 4 or 8 (DCT scaling) while
keeping the crop at least S pixels on each side, which is most of the decode cost of web-sized photos.
Randomness comes only from the generator passed in (the pipeline keys it per image), so augmentation is reproducible.

The build validated and re-encoded every stored image (data_pipelines/images.py), so failures here mean corrupted
storage; they raise ImageError with one of images.REASONS and the pipeline drops that row and counts the reason.
"""
import io
import math

import numpy as np
from PIL import Image

from data_pipelines import images as images_lib

SCALE = (0.9, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)


class ImageError(ValueError):
  """An image that cannot be used; `reason` is one of data_pipelines.images.REASONS."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


def random_resized_crop(width: int, height: int, rng: np.random.Generator, scale=SCALE, ratio=RATIO):
  """torchvision.transforms.RandomResizedCrop.get_params -> crop box (left, top, right, bottom)."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, left + w, top + h
  in_ratio = width / height  # fallback: the largest centred crop within the ratio range
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  top, left = (height - h) // 2, (width - w) // 2
  return left, top, left + w, top + h


def centre_crop(width: int, height: int):
  """Resize-short-side-then-centre-crop as a box in source pixels: the central square of side min(W, H)."""
  side = min(width, height)
  left, top = (width - side) / 2, (height - side) / 2
  return left, top, left + side, top + side


def load(data: bytes, size: int, rng: np.random.Generator | None, *, max_pixels: int = images_lib.DEFAULT_MAX_PIXELS,
         max_side: int = images_lib.DEFAULT_MAX_SIDE) -> np.ndarray:
  """Encoded image -> uint8 [size, size, 3]: the train transform with `rng`, the eval transform with rng=None.

  Raises ImageError for empty, non-image, truncated or corrupt bytes, and for sizes over the limits, which are
  checked from the header before anything is decoded (a decompression bomb never allocates its pixels).
  """
  if not data:
    raise ImageError(images_lib.EMPTY_FILE)
  try:
    image = Image.open(io.BytesIO(data), formats=images_lib.WEB_FORMATS)  # header only
  except Image.DecompressionBombError as e:
    raise ImageError(images_lib.IMAGE_TOO_LARGE) from e
  except Image.UnidentifiedImageError as e:
    raise ImageError(images_lib.NOT_AN_IMAGE) from e
  except Exception as e:  # pylint: disable=broad-except  # malformed headers raise anything
    raise ImageError(images_lib.CORRUPT_IMAGE, str(e)) from e
  width, height = image.size
  if width * height > max_pixels or max(width, height) > max_side:
    raise ImageError(images_lib.IMAGE_TOO_LARGE, f"{width}x{height}")
  if min(width, height) < 1:
    raise ImageError(images_lib.IMAGE_TOO_SMALL, f"{width}x{height}")
  box = random_resized_crop(width, height, rng) if rng is not None else centre_crop(width, height)
  if image.format == "JPEG":
    # The largest DCT downscale that keeps the crop >= size on both sides; Pillow picks scale 1/2/4/8 itself.
    shrink = min(box[2] - box[0], box[3] - box[1]) / size
    if shrink >= 2:
      image.draft("RGB", (math.ceil(width / shrink), math.ceil(height / shrink)))
  try:
    image.load()
  except Exception as e:  # pylint: disable=broad-except  # OSError, EOFError, SyntaxError, ...
    raise ImageError(_decode_failure(e), str(e)) from e
  if image.size != (width, height):  # draft shrank the decode: move the box to the decoded pixels
    sx, sy = image.size[0] / width, image.size[1] / height
    box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
  if image.mode != "RGB":  # the build stores RGB; anything else gets the build's own conversion rules
    try:
      image = images_lib._to_rgb(image)  # pylint: disable=protected-access
    except (ValueError, OSError) as e:
      raise ImageError(images_lib.UNSUPPORTED_MODE, image.mode) from e
  out = _resize(image, size, box)
  if out.shape != (size, size, 3):
    raise ImageError(images_lib.UNSUPPORTED_MODE, f"shape {out.shape}")
  return out


def _resize(image: Image.Image, size: int, box) -> np.ndarray:
  """The crop box of `image`, resized to size x size with bicubic: the one resampling step of both transforms."""
  return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box), np.uint8)


def eval_transform(images, size: int) -> np.ndarray:
  """Decoded pixels uint8 [H, W, 3] or a batch [N, H, W, 3] -> uint8 [..., size, size, 3]: the eval transform,
  exactly what `load(data, size, None)` does after decoding (so the pipeline, the evaluators and the exported
  encoder give the same pixels). Images already at size x size pass through untouched."""
  images = np.asarray(images, np.uint8)
  if images.ndim == 4:
    return np.stack([eval_transform(image, size) for image in images]) if len(images) else (
        np.zeros((0, size, size, 3), np.uint8))
  if images.ndim != 3 or images.shape[-1] != 3:
    raise ValueError(f"expected uint8 [H, W, 3] or [N, H, W, 3], got shape {images.shape}")
  height, width = images.shape[:2]
  return _resize(Image.fromarray(np.ascontiguousarray(images)), size, centre_crop(width, height))


def _decode_failure(error: Exception) -> str:
  text = str(error).lower()
  return images_lib.TRUNCATED_IMAGE if "truncated" in text or isinstance(error, EOFError) else (
      images_lib.CORRUPT_IMAGE)
