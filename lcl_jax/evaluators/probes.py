"""Frozen transfer, classification (docs/method.md section 7): probes trained on frozen ViT features.

- attention_probe: the paper's probe: attention pooling (one learned query, multi-head) + LayerNorm + linear, trained
  with AdamW on the frozen patch latents z [N, K, D_v].
- linear_probe: the fast one: logistic regression (scikit-learn) on standardised pooled features: the mean patch
  latent ("gap", which measures the ViT alone) or the contrastive head's v ("v").
Both train on `train_split` of the dataset, or, when that is "", on a seeded `train_fraction` of the evaluation set
(the rest is the test split: the same examples every run). Scalars: top1 (on the test split), num_train, num_test.
The probe's data is held on the host (z in the model's compute dtype); cap it with max_train_examples at scale.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lcl_jax.evaluators import base, datasets
from lcl_jax.models import AttentionPool

COMMON_PROBE = dict(
    train_split="",          # TFDS split to train on; "" -> split the evaluation set itself
    train_fraction=0.5,      # share of the evaluation set the probe trains on when train_split is ""
    max_train_examples=0,    # cap on a train_split (0: all)
    seed=0,                  # the deterministic split and the probe's initialisation / batches
)


@dataclasses.dataclass
class ProbeData:
  train: np.ndarray    # features [N_train, ...]
  train_labels: np.ndarray
  test: np.ndarray
  test_labels: np.ndarray


class _Probe(base.Evaluator):
  def __init__(self, name, spec, context):
    super().__init__(name, spec, context)
    self._train_set = None

  def train_set(self):
    """The spec's train_split as its own set (opened once), or None when the evaluation set is split instead."""
    if not self.spec.train_split:
      return None
    if self._train_set is None:
      spec = self.spec.copy_and_resolve_references()
      spec.split, spec.max_examples = self.spec.train_split, self.spec.max_train_examples
      self._train_set = datasets.load(spec, self.context.config)
    return self._train_set

  def prepare(self):
    self.eval_set()
    self.train_set()

  def probe_data(self, params, key: str) -> ProbeData:
    """Features `key` ("gap", "v" or "z") and labels of the train and test examples."""
    patches = key == "z"

    def encode(eval_set):
      labels = []
      out = self.context.encoders.images(params, eval_set.batches(self.spec.batch_size), self.spec.batch_size,
                                         patches=patches, keep=lambda b: labels.append(b["label"]))
      return out[key], np.concatenate(labels)

    feats, labels = encode(self.eval_set())
    if self.train_set() is not None:
      train, train_labels = encode(self.train_set())
      data = ProbeData(train, train_labels, feats, labels)
    else:
      order = np.random.default_rng(self.spec.seed).permutation(len(labels))
      cut = int(round(self.spec.train_fraction * len(labels)))
      if not 0 < cut < len(labels):
        raise ValueError(f"config.evals.{self.name}: train_fraction {self.spec.train_fraction} of "
                         f"{len(labels)} examples leaves an empty train or test split.")
      tr, te = np.sort(order[:cut]), np.sort(order[cut:])
      data = ProbeData(feats[tr], labels[tr], feats[te], labels[te])
    if min(data.train_labels.min(), data.test_labels.min()) < 0:
      raise ValueError(f"config.evals.{self.name}: probes need a labelled set (label_key).")
    return data

  def result(self, predictions, data: ProbeData) -> base.EvalResult:
    return base.EvalResult(scalars=dict(top1=float(np.mean(predictions == data.test_labels)),
                                        num_train=float(len(data.train_labels)),
                                        num_test=float(len(data.test_labels))))


class LinearProbe(_Probe):
  DEFAULTS = dict(COMMON_PROBE,
                  features="gap",     # "gap": mean patch latent of the ViT; "v": the attention-pooled vector
                  C=1.0,              # inverse L2 strength of the logistic regression
                  max_iter=1000)

  def run(self, params, step):
    del step
    from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
    if self.spec.features not in ("gap", "v"):
      raise ValueError(f"config.evals.{self.name}.features must be 'gap' or 'v', got {self.spec.features!r}.")
    data = self.probe_data(params, self.spec.features)
    train, test = data.train.astype(np.float64), data.test.astype(np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6   # standardise: lbfgs converges on any feature scale
    clf = LogisticRegression(C=self.spec.C, max_iter=self.spec.max_iter)
    clf.fit((train - mean) / std, data.train_labels)
    return self.result(clf.predict((test - mean) / std), data)


class ProbeHead(nn.Module):
  """Attention pooling + LayerNorm + linear on patch latents z [B, K, D] -> logits [B, classes]."""
  num_classes: int
  num_heads: int

  @nn.compact
  def __call__(self, z):
    x = AttentionPool(z.shape[-1], self.num_heads, name="pool")(z.astype(jnp.float32))
    x = nn.LayerNorm(name="norm")(x)
    return nn.Dense(self.num_classes, name="head")(x)


@functools.partial(jax.jit, static_argnames=("num_classes", "num_heads", "steps", "batch_size", "learning_rate",
                                             "weight_decay"))
def train_attention_probe(z, labels, key, *, num_classes, num_heads, steps, batch_size, learning_rate,
                          weight_decay):
  """AdamW (warm-up + cosine) on random minibatches of (z [N, K, D], labels [N]); the whole loop is one scan, one
  compile per shape and setting. -> the probe's params."""
  head = ProbeHead(num_classes, num_heads)
  key_init, key_batches = jax.random.split(key)
  params = nn.unbox(head.init(key_init, jnp.zeros((1,) + z.shape[1:], jnp.float32))["params"])
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(steps // 10, 1), steps),
                   weight_decay=weight_decay)

  def loss_fn(p, zb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(head.apply({"params": p}, zb), yb).mean()

  def step(carry, key):
    p, opt = carry
    idx = jax.random.randint(key, (batch_size,), 0, z.shape[0])
    updates, opt = tx.update(jax.grad(loss_fn)(p, z[idx], labels[idx]), opt, p)
    return (optax.apply_updates(p, updates), opt), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key_batches, steps))
  return params


@functools.partial(jax.jit, static_argnames=("num_classes", "num_heads"))
def predict_attention_probe(params, z, *, num_classes, num_heads):
  return jnp.argmax(ProbeHead(num_classes, num_heads).apply({"params": params}, z), axis=-1)


class AttentionProbe(_Probe):
  DEFAULTS = dict(COMMON_PROBE,
                  num_heads=0,           # attention-pooling heads; 0 -> the ViT's num_heads
                  steps=500,             # optimizer steps on random minibatches
                  probe_batch_size=256,
                  learning_rate=1e-3,
                  weight_decay=1e-4)

  def run(self, params, step):
    del step
    data = self.probe_data(params, "z")
    num_classes = int(max(data.train_labels.max(), data.test_labels.max())) + 1
    heads = self.spec.num_heads or self.context.config.model.vit.num_heads
    static = dict(num_classes=num_classes, num_heads=heads)
    probe = train_attention_probe(
        jax.device_put(data.train), jax.device_put(data.train_labels), jax.random.key(self.spec.seed),
        steps=self.spec.steps, batch_size=self.spec.probe_batch_size, learning_rate=float(self.spec.learning_rate),
        weight_decay=float(self.spec.weight_decay), **static)
    block = 1024  # test examples per call: bounded memory on large sets
    predictions = np.concatenate([
        jax.device_get(predict_attention_probe(probe, jax.device_put(data.test[s:s + block]), **static))
        for s in range(0, len(data.test), block)])
    return self.result(predictions, data)
