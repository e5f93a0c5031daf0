"""Files by path, local or a URL (gs://...): URLs through tf.io.gfile, imported only for them, so reading a local
file (a tokenizer at config time, an exported encoder) never pays TensorFlow's start-up."""
import os


def _gfile():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  # only URLs need it (module docstring)
  return tf.io.gfile


def open_file(path: str, mode: str):
  return _gfile().GFile(path, mode) if "://" in path else open(path, mode)


def makedirs(path: str) -> None:
  if "://" in path:
    _gfile().makedirs(path)
  elif path:
    os.makedirs(path, exist_ok=True)
