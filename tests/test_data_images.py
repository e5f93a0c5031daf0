"""data_pipelines.images.validate_image: every bad-image kind of docs/formats.md, and what TensorFlow decodes after."""
import io
import struct
import zlib

import numpy as np
from PIL import Image
from PIL import ImageFile
import pytest
import tensorflow as tf

from data_pipelines import images
from data_pipelines.images import validate_image
from raw_data import decode, image_bytes, patterned_png


def tf_decode(data: bytes) -> np.ndarray:
  return tf.io.decode_image(data, channels=3).numpy()


def valid(data: bytes, **kwargs) -> bytes:
  out, reason = validate_image(data, **kwargs)
  assert reason is None, reason
  decoded = tf_decode(out)
  assert decoded.ndim == 3 and decoded.shape[-1] == 3 and decoded.dtype == np.uint8
  return out


def png_header_only(width: int, height: int) -> bytes:
  """A PNG signature + IHDR declaring width x height, and no pixel data at all."""
  def chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_rgb_png_kept_exactly_as_png():
  data = patterned_png(0)
  out = valid(data)
  assert out.startswith(b"\x89PNG")
  np.testing.assert_array_equal(tf_decode(out), decode(data))


def test_jpeg_reencoded_as_jpeg_close_to_source():
  data = image_bytes("JPEG", size=(32, 24), color=(10, 120, 240))
  out = valid(data)
  assert out[:2] == b"\xff\xd8"
  assert np.abs(tf_decode(out).astype(int) - decode(data).astype(int)).max() <= 3


def test_zero_byte_file():
  assert validate_image(b"") == (None, "empty_file")


def test_non_image_bytes():
  assert validate_image(b"<html><body>404 not found</body></html>") == (None, "not_an_image")


def test_non_web_formats_refused():
  # Pillow could open these (EPS by running Ghostscript on the bytes); a web image pipeline must not.
  assert validate_image(image_bytes("EPS", size=(16, 16))) == (None, "not_an_image")
  assert validate_image(image_bytes("PCX", size=(16, 16))) == (None, "not_an_image")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(fmt):
  data = patterned_png(1, size=(64, 64)) if fmt == "PNG" else image_bytes("JPEG", size=(64, 64))
  assert validate_image(data[: len(data) // 2]) == (None, "truncated_image")


def test_corrupt_image_stream():
  data = bytearray(patterned_png(2, size=(64, 64)))
  idat = data.index(b"IDAT")
  data[idat + 8: idat + 200] = b"\x00" * 192  # zlib stream destroyed, header intact
  out, reason = validate_image(bytes(data))
  assert out is None and reason in ("corrupt_image", "truncated_image")


def test_cmyk_converted_to_rgb():
  data = image_bytes("JPEG", size=(16, 16), color=(0, 255, 255, 0), mode="CMYK")  # pure red in CMYK
  assert Image.open(io.BytesIO(data)).mode == "CMYK"
  pixel = tf_decode(valid(data))[8, 8].astype(int)
  assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


def test_16bit_grey_scaled_not_clipped():
  grey = np.full((16, 16), 32896, np.uint16)  # 128 * 257: mid-grey in 16 bit
  source = io.BytesIO()
  Image.fromarray(grey).save(source, format="PNG")
  data = source.getvalue()
  naive = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  assert naive.min() == 255  # the trap: Pillow clips 16-bit values at 255
  pixels = tf_decode(valid(data))
  assert np.all(np.abs(pixels.astype(int) - 128) <= 1)


def test_16bit_gradient_keeps_its_order():
  ramp = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (16, 1))
  source = io.BytesIO()
  Image.fromarray(ramp).save(source, format="PNG")
  row = tf_decode(valid(source.getvalue()))[0, :, 0].astype(int)
  assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row) > 0)


def test_float_grey_in_unit_range_scaled():
  source = io.BytesIO()
  Image.fromarray(np.full((16, 16), 0.5, np.float32), mode="F").save(source, format="TIFF")
  assert np.all(np.abs(tf_decode(valid(source.getvalue())).astype(int) - 128) <= 1)


def test_palette_with_transparency_on_white():
  image = Image.new("P", (16, 16), 0)
  image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
  image.paste(1, (0, 0, 8, 16))  # left half index 1 (blue), right half index 0 (red)
  source = io.BytesIO()
  image.save(source, format="PNG", transparency=1)  # index 1 is transparent
  pixels = tf_decode(valid(source.getvalue()))
  np.testing.assert_array_equal(pixels[4, 2], [255, 255, 255])
  np.testing.assert_array_equal(pixels[4, 12], [255, 0, 0])


def test_palette_without_transparency():
  data = image_bytes("GIF", size=(16, 16), color=(0, 255, 0))
  pixels = tf_decode(valid(data))
  assert pixels[0, 0, 1] > 200 and pixels[0, 0, 0] < 50


def test_rgba_composited_on_white():
  rgba = np.zeros((16, 16, 4), np.uint8)
  rgba[:, :8] = (0, 0, 255, 255)     # opaque blue
  rgba[:, 8:] = (0, 0, 0, 0)         # fully transparent black
  source = io.BytesIO()
  Image.fromarray(rgba, "RGBA").save(source, format="PNG")
  pixels = tf_decode(valid(source.getvalue()))
  np.testing.assert_array_equal(pixels[0, 0], [0, 0, 255])
  np.testing.assert_array_equal(pixels[0, 15], [255, 255, 255])


def test_la_composited_on_white():
  la = np.zeros((16, 16, 2), np.uint8)
  la[..., 0] = 40
  la[..., 1] = 128  # half transparent dark grey over white
  source = io.BytesIO()
  Image.fromarray(la, "LA").save(source, format="PNG")
  value = tf_decode(valid(source.getvalue()))[0, 0]
  assert np.all(np.abs(value.astype(int) - (40 * 128 + 255 * 127) // 255) <= 2)


@pytest.mark.parametrize("mode,color,expected", [("L", 77, 77), ("1", 1, 255)])
def test_grayscale_to_rgb(mode, color, expected):
  data = image_bytes("PNG", size=(16, 16), color=color, mode=mode)
  pixels = tf_decode(valid(data))
  np.testing.assert_array_equal(pixels[3, 3], [expected] * 3)


def test_animated_gif_becomes_single_frame():
  frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
  source = io.BytesIO()
  frames[0].save(source, format="GIF", save_all=True, append_images=frames[1:])
  assert tf.io.decode_image(source.getvalue(), channels=3).shape.rank == 4  # why it must be re-encoded
  pixels = tf_decode(valid(source.getvalue()))
  assert pixels[0, 0, 0] > 200


def test_webp_becomes_decodable():
  data = image_bytes("WEBP", size=(16, 16), color=(0, 200, 0))
  out = valid(data)
  assert out[:2] == b"\xff\xd8"  # lossy source -> JPEG


def test_exif_orientation_applied():
  image = Image.new("RGB", (32, 16), (10, 10, 10))
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees on display
  source = io.BytesIO()
  image.save(source, format="JPEG", exif=exif)
  assert tf_decode(valid(source.getvalue())).shape == (32, 16, 3)


def test_decompression_bomb_refused_before_decoding(monkeypatch):
  loads = []
  original_load = ImageFile.ImageFile.load  # the decoder entry point of every file-based format
  monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size) or original_load(self))
  # 100000 x 100000 declared (10 G pixels) in a file of 57 bytes with no pixel data: decoding would fail as a
  # broken image, so image_too_large also proves the refusal came from the header.
  assert validate_image(png_header_only(100000, 100000)) == (None, "image_too_large")
  # Under Pillow's own limit but over ours.
  assert validate_image(png_header_only(9000, 9000)) == (None, "image_too_large")
  assert validate_image(png_header_only(100, 100), max_pixels=5000) == (None, "image_too_large")
  assert validate_image(png_header_only(20000, 20), max_side=16384) == (None, "image_too_large")
  assert loads == []
  # The same kind of file at an allowed size is decoded, and fails as decoding must.
  assert validate_image(png_header_only(100, 100))[1] in ("corrupt_image", "truncated_image")
  assert loads == [(100, 100)]


def test_too_small():
  assert validate_image(image_bytes("PNG", size=(4, 4))) == (None, "image_too_small")
  assert validate_image(image_bytes("PNG", size=(4, 4)), min_side=1)[1] is None


def test_max_stored_side_downscales_keeping_aspect():
  out = valid(patterned_png(3, size=(64, 32)), max_stored_side=16)
  assert tf_decode(out).shape == (8, 16, 3)
  assert tf_decode(valid(patterned_png(3, size=(64, 32)))).shape == (32, 64, 3)


def test_reasons_are_stable_strings():
  assert images.REASONS == ("empty_file", "not_an_image", "truncated_image", "corrupt_image", "image_too_large",
                            "image_too_small", "unsupported_mode")
