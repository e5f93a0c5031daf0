"""Where MMC4/OBELICS images live after the user downloaded them: a folder of files, or tar shards of files.

`open_image_store(images)` picks the layout:
  - `images` is a `.tar` file, or a folder with at least one `*.tar` at its top level: tar shards. Member names are
    the image names (`image_name` for MMC4); the tars' headers are indexed once (about 100 bytes of memory per image,
    no image data), and members are read by seeking, so the tars are never unpacked.
  - otherwise a folder: an image name is a path relative to it.
Names go through `safe_join`/`safe_relpath` first: absolute names and names escaping the root are refused
(`unsafe_path`) and never opened. Files larger than MAX_FILE_BYTES are refused before being read into memory.
"""
import tarfile
import threading

import tensorflow as tf

from data_pipelines.bad_input import safe_join, safe_relpath
from data_pipelines.images import IMAGE_TOO_LARGE, validate_image

UNSAFE_PATH = "unsafe_path"
MISSING_IMAGE = "missing_image"
MAX_FILE_BYTES = 64 << 20  # no sane web image is this big; reading it would only waste memory


class ImageFolder:
  """Images as files under one root folder (local or gs://)."""

  def __init__(self, root: str):
    self.root = root

  def read(self, name) -> tuple[bytes | None, str | None]:
    """(file bytes, None) or (None, reason): unsafe_path, missing_image, image_too_large."""
    path = safe_join(self.root, name)
    if path is None:
      return None, UNSAFE_PATH
    try:
      with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    except (tf.errors.OpError, OSError):  # absent, a directory, unreadable: the download did not produce it
      return None, MISSING_IMAGE
    if len(data) > MAX_FILE_BYTES:
      return None, IMAGE_TOO_LARGE
    return data, None

  def close(self):
    pass


class ImageTars:
  """Images as members of tar files; an index of member name -> (tar, offset, size) built from the headers."""

  def __init__(self, tar_paths: list[str]):
    self._index = {}
    for path in sorted(tar_paths):
      with tf.io.gfile.GFile(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
          rel = safe_relpath(member.name)
          if member.isfile() and rel is not None and rel not in self._index:  # first tar wins on duplicates
            self._index[rel] = (path, member.offset_data, member.size)
    self._handles = {}
    self._lock = threading.Lock()  # one seek+read at a time per store; workers share the open handles

  def __len__(self):
    return len(self._index)

  def read(self, name) -> tuple[bytes | None, str | None]:
    """(member bytes, None) or (None, reason): unsafe_path, missing_image, image_too_large."""
    rel = safe_relpath(name)
    if rel is None:
      return None, UNSAFE_PATH
    entry = self._index.get(rel)
    if entry is None:
      return None, MISSING_IMAGE
    path, offset, size = entry
    if size > MAX_FILE_BYTES:
      return None, IMAGE_TOO_LARGE
    with self._lock:
      handle = self._handles.get(path)
      if handle is None:
        handle = self._handles[path] = tf.io.gfile.GFile(path, "rb")
      handle.seek(offset)
      return handle.read(size), None

  def close(self):
    with self._lock:
      for handle in self._handles.values():
        handle.close()
      self._handles.clear()


def open_image_store(images: str) -> ImageFolder | ImageTars:
  """The store for `images` (see the module docstring for how the layout is chosen)."""
  if not tf.io.gfile.exists(images):
    # Fail loudly: a wrong path would otherwise "succeed" with every image counted missing.
    raise ValueError(f"Image folder or tar {images} does not exist; pass images_dir (--images).")
  if images.endswith(".tar") and not tf.io.gfile.isdir(images):
    return ImageTars([images])
  tars = tf.io.gfile.glob(images.rstrip("/") + "/*.tar")
  if tars:
    return ImageTars(tars)
  return ImageFolder(images)


def read_valid(store, name, image_options) -> tuple[bytes | None, str | None]:
  """store.read, then images.validate_image: (the image as stored, None) or (None, the first reason it fails)."""
  data, reason = store.read(name)
  return (None, reason) if reason is not None else validate_image(data, **(image_options or {}))
