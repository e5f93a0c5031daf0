"""Evaluation image sets: the demo's held-out digits, any .npz in that layout, or a TFDS dataset by name and split.

Every set streams host batches `dict(images uint8 [b, S, S, 3], label int32 [b], captions list[list[str]])`
(b <= batch size, the last batch partial) after the evaluation transform of docs/method.md section 5: resize the short
side to S = config.model.vit.image_size, then centre crop. Multi-host: every host reads the whole set (evaluation
sets are small) and the sharded runner (features.py) gives each device its slice, so no host-dependent split exists.

tensorflow and tfds are imported inside the functions: a training run without TFDS evaluators never pays for them.
"""
import dataclasses
import io
from typing import Callable, Iterator, Optional

import numpy as np

from data_pipelines import augment

# Prompts for TFDS classification sets without their own (the 7-template ensemble of CLIP's ImageNet notebook).
DEFAULT_TEMPLATES = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                     "a {} in a video game.", "art of the {}.", "a photo of the small {}.")


@dataclasses.dataclass
class EvalSet:
  name: str
  class_names: list        # label -> name; empty when the set has no labels
  templates: list          # prompts shipped with the set (the demo's); empty otherwise
  batches: Callable[[int], Iterator[dict]]  # batch_size -> host batches, in a fixed order


def encode_png(image: np.ndarray) -> bytes:
  """uint8 [H, W, 3] -> PNG bytes (lossless: decoding gives the same pixels back)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  out = io.BytesIO()
  Image.fromarray(image).save(out, format="PNG")
  return out.getvalue()


def _batched(examples: Iterator[dict], batch_size: int) -> Iterator[dict]:
  buf = []
  for ex in examples:
    buf.append(ex)
    if len(buf) == batch_size:
      yield _stack(buf)
      buf = []
  if buf:
    yield _stack(buf)


def _stack(examples):
  return dict(images=np.stack([e["image"] for e in examples]),
              label=np.asarray([e["label"] for e in examples], np.int32),
              captions=[e["captions"] for e in examples])


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def load_npz(path: str, *, image_size: int, max_examples: int = 0) -> EvalSet:
  """The demo's eval file layout (data_pipelines/demo/__init__.py): images, labels, captions, class_names, templates."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  with tf.io.gfile.GFile(path, "rb") as f:
    data = np.load(io.BytesIO(f.read()))
    arrays = {k: data[k] for k in data.files}
  n = len(arrays["images"]) if not max_examples else min(max_examples, len(arrays["images"]))
  images = augment.eval_transform(arrays["images"][:n], image_size)
  labels = arrays["labels"][:n].astype(np.int32) if "labels" in arrays else np.full(n, -1, np.int32)
  captions = [[_text(c)] for c in arrays["captions"][:n]] if "captions" in arrays else [[] for _ in range(n)]

  def batches(batch_size):
    for start in range(0, n, batch_size):
      end = min(start + batch_size, n)
      yield dict(images=images[start:end], label=labels[start:end], captions=captions[start:end])

  return EvalSet(name=path, class_names=[_text(c) for c in arrays.get("class_names", [])],
                 templates=[_text(t) for t in arrays.get("templates", [])], batches=batches)


def _nested(example, key: str):
  for part in key.split("/"):
    example = example[part]
  return example


def load_tfds(name: str, split: str, *, data_dir: Optional[str], image_size: int, max_examples: int = 0,
              image_key: str = "image", label_key: str = "label", caption_key: str = "") -> EvalSet:
  """A TFDS dataset as the user holds it in `data_dir` (nothing is downloaded)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder(name, data_dir=data_dir or None)
  builder.as_dataset(split=split)  # fails now if the set or split is not in data_dir (a pipeline, no data read)
  label_feature = builder.info.features[label_key] if label_key in builder.info.features else None
  class_names = list(getattr(label_feature, "names", None) or [])

  def batches(batch_size):
    ds = builder.as_dataset(split=split, shuffle_files=False)
    if max_examples:
      ds = ds.take(max_examples)

    def prepare(ex):
      out = dict(image=ex[image_key])
      out["label"] = tf.cast(ex[label_key], tf.int32) if label_feature is not None else tf.constant(-1)
      out["captions"] = _nested(ex, caption_key) if caption_key else tf.constant([], tf.string)
      return out

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    examples = (dict(image=augment.eval_transform(ex["image"], image_size), label=int(ex["label"]),
                     captions=[_text(c) for c in ex["captions"]]) for ex in ds.as_numpy_iterator())
    yield from _batched(examples, batch_size)

  return EvalSet(name=f"{name}:{split}", class_names=class_names, templates=[], batches=batches)


def load(spec, config) -> EvalSet:
  """An evaluator's `dataset` / `split` / `data_dir` / `max_examples` (and TFDS feature keys) -> EvalSet.

  dataset: "demo" (the held-out digits), a path ending in .npz (same layout), or a TFDS name; data_dir "" means
  config.data.data_dir (unless that is the demo corpus, which holds no public TFDS sets).
  """
  from data_pipelines import demo  # pylint: disable=import-outside-toplevel
  size = config.model.vit.image_size
  dataset = demo.resolve(spec.dataset, "eval")
  if dataset.endswith(".npz"):
    return load_npz(dataset, image_size=size, max_examples=spec.max_examples)
  data_dir = spec.data_dir or (config.data.data_dir if config.data.data_dir != demo.DEMO else "")
  return load_tfds(spec.dataset, spec.split, data_dir=data_dir, image_size=size, max_examples=spec.max_examples,
                   image_key=spec.image_key, label_key=spec.label_key, caption_key=spec.caption_key)


def load_tokenizer(config):
  """config.data.tokenizer: a SentencePiece path, "clip_bpe" (data_pipelines.clip_tokenizer), or "demo" for the
  demo corpus's tokenizer."""
  from data_pipelines import demo, tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  spec = demo.resolve(config.data.tokenizer, "tokenizer")
  if not spec:
    raise ValueError("Text evaluators need config.data.tokenizer (a SentencePiece model path, 'clip_bpe', or "
                     "'demo').")
  return tokenizer_lib.load_tokenizer(spec)
