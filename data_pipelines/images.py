"""Image validation: raw web bytes in, 8-bit RGB bytes that TensorFlow always decodes out (or the reason why not).

Order of checks, and why:
1. Size from the header only (`PIL.Image.open` parses the header, it does not decode). Decoders, TensorFlow's
   included, have no pixel limit, so a 100000 x 100000 PNG of a few KB would allocate 30 GB if decoded: refuse it
   before decoding (`image_too_large`), and refuse icons/tracking pixels (`image_too_small`).
2. Full decode with Pillow (truncation raises; `LOAD_TRUNCATED_IMAGES` is left off on purpose).
3. Conversion to RGB, never by dropping information blindly:
   - 16-bit/32-bit integer grey (`I;16*`, `I`) is SCALED to 8 bit (v / 257). Pillow's `convert("RGB")` clips instead,
     which turns a mid-grey 16-bit PNG pure white.
   - Float grey (`F`): [0, 1] data is scaled by 255, anything else is clipped to [0, 255].
   - Transparency (RGBA, LA, PA, palette or grey with a tRNS entry) is composited on white, as a browser page shows it.
   - CMYK, YCbCr, palette, 1-bit and grey go through Pillow's conversions. EXIF orientation is applied, so the
     stored pixels are upright (the EXIF tag does not survive re-encoding).
   - Animated GIF/WebP: the first frame.
4. Re-encoding (always, so every stored image is a plain PNG or baseline JPEG that `tf.io.decode_image(x, channels=3)`
   decodes to a 3-D tensor; TF decodes GIF and WebP as 4-D frame stacks and some JPEG variants not at all):
   - PNG when the source format is lossless (PNG, GIF, BMP, TIFF, ICO): exact pixels, no generational loss.
   - JPEG quality 95 (4:4:4) when the source was lossy (JPEG, WebP, AVIF): a second lossy pass at 95 is visually
     free, while PNG would inflate photos several-fold.
Only web image formats are opened (WEB_FORMATS); anything else is `not_an_image`.
"""
import io
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps

# Refuse above these, from the header alone. 64 Mpixel is far beyond any training resolution; a side limit catches
# absurd strips (1 x 50M) that pass the pixel limit.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
DEFAULT_MAX_SIDE = 16384
# Icons, spacers and tracking pixels carry no content. 8 keeps 8x8 sources (e.g. sklearn digits) usable.
DEFAULT_MIN_SIDE = 8
JPEG_QUALITY = 95

# Web image formats only. Everything else Pillow could open is refused as not_an_image: EPS/PDF would run
# Ghostscript on untrusted bytes, and exotic formats are not what web pages show.
Image.init()  # register every plugin now: Image.open(formats=...) only looks among registered ones
WEB_FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "ICO") if f in Image.OPEN)
LOSSLESS_FORMATS = frozenset({"PNG", "GIF", "BMP", "TIFF", "ICO"})

# Stable reason strings (counted in the build report; tests and dashboards rely on them).
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED_IMAGE = "truncated_image"
CORRUPT_IMAGE = "corrupt_image"
IMAGE_TOO_LARGE = "image_too_large"
IMAGE_TOO_SMALL = "image_too_small"
UNSUPPORTED_MODE = "unsupported_mode"
REASONS = (EMPTY_FILE, NOT_AN_IMAGE, TRUNCATED_IMAGE, CORRUPT_IMAGE, IMAGE_TOO_LARGE, IMAGE_TOO_SMALL,
           UNSUPPORTED_MODE)

_WHITE = (255, 255, 255)

# Pillow warns between its MAX_IMAGE_PIXELS and twice that, at open time; our own (lower) limits decide, so the
# warning is noise. Set once here: warnings.catch_warnings() is not thread-safe and validation runs on threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def validate_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE,
                   min_side: int = DEFAULT_MIN_SIDE, max_stored_side: int | None = None
                   ) -> tuple[bytes | None, str | None]:
  """Returns (encoded RGB PNG/JPEG bytes, None) for a usable image, else (None, reason).

  max_stored_side: if set, images whose longer side exceeds it are downscaled (bicubic, aspect kept) before encoding,
    to keep the TFDS files small when training resolution is far below the source's.
  """
  if not data:
    return None, EMPTY_FILE
  try:
    image = Image.open(io.BytesIO(data), formats=WEB_FORMATS)  # parses the header only
  except Image.DecompressionBombError:
    return None, IMAGE_TOO_LARGE  # Pillow's own header check (over 2x its MAX_IMAGE_PIXELS)
  except Image.UnidentifiedImageError:
    return None, NOT_AN_IMAGE
  except Exception as e:  # pylint: disable=broad-except  # malformed headers raise anything (struct.error, ...)
    return None, _decode_failure(e)
  width, height = image.size
  if width * height > max_pixels or max(width, height) > max_side:
    return None, IMAGE_TOO_LARGE
  if min(width, height) < min_side:
    return None, IMAGE_TOO_SMALL
  source_format = image.format
  try:
    image.load()
  except Image.DecompressionBombError:
    return None, IMAGE_TOO_LARGE
  except Exception as e:  # pylint: disable=broad-except  # OSError, EOFError, SyntaxError, ValueError, ...
    return None, _decode_failure(e)
  try:
    rgb = _to_rgb(image)
  except (ValueError, OSError):
    return None, UNSUPPORTED_MODE
  if max_stored_side and max(rgb.size) > max_stored_side:
    scale = max_stored_side / max(rgb.size)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    rgb = rgb.resize(size, Image.Resampling.BICUBIC)
  return _encode(rgb, lossless=source_format in LOSSLESS_FORMATS), None


def _decode_failure(error: Exception) -> str:
  """Pillow says "truncated" (e.g. "image file is truncated", "Truncated File Read") when the bytes simply end."""
  return TRUNCATED_IMAGE if isinstance(error, (OSError, EOFError)) and "truncated" in str(error).lower() else (
      CORRUPT_IMAGE)


def _to_rgb(image: Image.Image) -> Image.Image:
  """Any decoded Pillow image -> mode RGB (see the module docstring for the rules)."""
  try:
    image = ImageOps.exif_transpose(image)
  except Exception:  # pylint: disable=broad-except  # broken EXIF must not cost the image
    pass
  mode = image.mode
  if mode.startswith("I") or mode == "F":
    return Image.fromarray(_to_8bit(np.asarray(image), mode), "L").convert("RGB")
  if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")
  if mode == "RGB":
    return image
  return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, RGBX, ...; raises ValueError for modes it cannot map


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
  """High-bit-depth grey -> uint8, scaling the full range (not clipping at 255)."""
  values = values.astype(np.float64)
  if mode == "F":
    if values.size and np.nanmax(values) <= 1.0:
      values = values * 255.0
  else:  # I;16, I;16B, I;16L, I;16N, I: 16-bit range. 32-bit ints beyond it are clipped to it.
    values = np.clip(values, 0, 65535) / 257.0
  return np.clip(np.nan_to_num(np.round(values)), 0, 255).astype(np.uint8)


def _encode(rgb: Image.Image, *, lossless: bool) -> bytes:
  out = io.BytesIO()
  if lossless:
    rgb.save(out, format="PNG")
  else:
    rgb.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
  return out.getvalue()
