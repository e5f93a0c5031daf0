"""Zero-shot classification with the decoder as text encoder (docs/method.md section 7).

Each class name fills every prompt template; each prompt is tokenised as `<s> prompt <boi>` and its text vector is
t at that `<boi>`. A class's vector is the mean of its L2-normalised prompt vectors, normalised again (CLIP's prompt
ensembling). Images are classified by cosine similarity of their pooled v to the class vectors.
Scalars: top1, top5, num_examples. Pictures: a grid of held-out images with their top predictions, and the
confusion matrix of the top-1 predictions.
"""
import numpy as np

from lcl_jax.evaluators import base, datasets, features, pictures


def _read_lines(path: str) -> list:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  with tf.io.gfile.GFile(path) as f:
    return [line.strip() for line in f if line.strip()]


class ZeroShot(base.Evaluator):
  DEFAULTS = dict(
      templates=(),     # prompt templates with one "{}"; () -> the set's own (demo) or datasets.DEFAULT_TEMPLATES
      class_names="",   # a text file of names (one per label per line), or a list; "" -> the set's label names
      text_len=32,      # prompt row length in tokens, `<s>` and `<boi>` included
      grid_size=16,     # held-out images drawn in the predictions picture (the set's first ones)
  )

  def class_names(self) -> list:
    names = self.spec.class_names
    if isinstance(names, str):
      return _read_lines(names) if names else self.eval_set().class_names
    return list(names)

  def templates(self) -> list:
    return list(self.spec.templates) or self.eval_set().templates or list(datasets.DEFAULT_TEMPLATES)

  def class_vectors(self, params, names, templates) -> np.ndarray:
    """-> unit class vectors [C, D_e]."""
    prompts = [template.format(name) for name in names for template in templates]
    rows = features.prompt_rows(self.context.tokenizer, prompts, self.spec.text_len)
    t = features.l2_normalize(self.context.encoders.texts(params, rows, self.spec.batch_size))
    return features.l2_normalize(t.reshape(len(names), len(templates), -1).mean(axis=1))

  def run(self, params, step):
    del step
    names, templates = self.class_names(), self.templates()
    if not names:
      raise ValueError(f"config.evals.{self.name}: no class names (set class_names, or use a labelled set).")
    classes = self.class_vectors(params, names, templates)

    labels, shown = [], []

    def keep(batch):
      labels.append(batch["label"])
      room = self.spec.grid_size - sum(len(s) for s in shown)
      if room > 0:
        shown.append(batch["images"][:room])

    out = self.context.encoders.images(params, self.eval_set().batches(self.spec.batch_size), self.spec.batch_size,
                                       keep=keep)
    labels = np.concatenate(labels)
    if labels.min() < 0 or labels.max() >= len(names):
      raise ValueError(f"config.evals.{self.name}: labels outside [0, {len(names)}) for {len(names)} class names.")
    top, scores = features.top_k(features.l2_normalize(out["v"]), classes, 5)
    hit = top == labels[:, None]
    counts = np.zeros((len(names), len(names)), np.int64)
    np.add.at(counts, (labels, top[:, 0]), 1)

    images = {}
    if shown:
      shown = np.concatenate(shown)
      g = len(shown)
      images["predictions"] = pictures.prediction_grid(
          shown, [names[i] for i in labels[:g]], [[names[j] for j in row[:3]] for row in top[:g]], scores[:g, :3])
    images["confusion"] = pictures.confusion_matrix(counts, names)
    scalars = dict(top1=float(hit[:, 0].mean()), top5=float(hit.any(axis=1).mean()),
                   num_examples=float(len(labels)))
    return base.EvalResult(scalars=scalars, images=images)
