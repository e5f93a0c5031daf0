"""Attention kernels: each Pallas kernel (interpret mode on CPU) equals the XLA path on packed rows, values and
gradients; the per-platform choice and its start-up errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcl_jax import sharding
from lcl_jax.models import attention
from lcl_jax.models.decoder import Decoder


def packed_segments(batch, length, rng):
  """Rows of several segments of random lengths, some with trailing padding (segment 0)."""
  seg = np.zeros((batch, length), np.int32)
  for b in range(batch):
    i, s = 0, 1
    while i < length - 8:
      n = int(rng.integers(5, length // 2))
      seg[b, i:i + n] = s
      i, s = i + n, s + 1
  return seg


@pytest.mark.parametrize("kernel", ["splash", "triton"])
@pytest.mark.parametrize("causal,length", [(True, 200), (False, 49)])
def test_pallas_kernel_equals_xla(kernel, causal, length):
  """Decoder shape (causal, packed segments, L = 200 not a multiple of the 128 block) and ViT shape (no mask, K =
  49 patches): float32 values and gradients of q, k and v."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, length, 2, 32)).astype(np.float32)) for _ in range(3))
  seg = jnp.asarray(packed_segments(2, length, rng)) if causal else None
  assert seg is None or len(np.unique(seg[0])) > 2

  def loss(kern):
    def f(q, k, v):
      out = attention.dot_product_attention(q, k, v, kernel=kern, causal=causal, segment_ids=seg, interpret=True)
      return jnp.sum(jnp.sin(out)), out
    return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)

  (_, want), want_grads = loss("xla")(q, k, v)
  (_, got), got_grads = loss(kernel)(q, k, v)
  np.testing.assert_allclose(got, want, atol=2e-6)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, atol=1e-5)


def test_decoder_with_splash_on_a_mesh_equals_xla():
  """The kernel inside the model under a data x tensor mesh (shard_map over batch and heads) gives the XLA
  decoder's hidden states."""
  rng = np.random.default_rng(1)
  kw = dict(width=64, depth=1, num_heads=4, mlp_dim=64, vocab_size=40, max_len=100)
  tokens = jnp.asarray(rng.integers(6, 40, (4, 100)), jnp.int32)
  seg = jnp.asarray(packed_segments(4, 100, rng))
  pos = jnp.broadcast_to(jnp.arange(100), tokens.shape)
  mesh = sharding.make_mesh(dict(data=2, fsdp=1, tensor=2), devices=jax.devices()[:4])
  rules = [("act_batch", ("data", "fsdp")), ("act_heads", "tensor"), ("heads", "tensor")]

  def run(kernel):
    model = Decoder(**kw, attention=kernel, interpret=True)
    forward = lambda m, tokens: m(m.embed(tokens), seg, pos)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      params = jax.jit(lambda: model.init(jax.random.key(0), tokens, method=forward))()
      return jax.jit(lambda p: model.apply(p, tokens, method=forward))(params)

  np.testing.assert_allclose(run("splash"), run("xla"), atol=1e-5)


def test_kernel_choice_per_platform_and_clear_errors():
  assert attention.resolve("auto", "tpu") == ("splash", "splash")
  assert attention.resolve("auto", "gpu") == ("cudnn", "triton")
  assert attention.resolve("auto", "cpu") == ("xla", "xla")
  assert attention.resolve("xla", "tpu") == ("xla", "xla")
  with pytest.raises(attention.KernelUnavailable, match="needs a TPU.*set --config.model.attention=auto"):
    attention.resolve("splash", "cpu")
  with pytest.raises(attention.KernelUnavailable, match="cannot mask the decoder's packed rows"):
    attention.resolve("cudnn", "gpu")
  with pytest.raises(attention.KernelUnavailable, match="not one of"):
    attention.resolve("flash", "gpu")


def test_xla_causal_blocks_equal_the_dense_mask():
  """The xla kernel's blocked causal path (L = 300: two whole 128-blocks and a partial one) equals one dense
  segment-and-causal mask, values and gradients."""
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 300, 2, 16)).astype(np.float32)) for _ in range(3))
  seg = jnp.asarray(packed_segments(2, 300, rng))

  def dense(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, mask=attention.segment_mask(seg, causal=True))

  def blocked(q, k, v):
    return attention.dot_product_attention(q, k, v, kernel="xla", causal=True, segment_ids=seg)

  for f in (dense, blocked):
    assert f(q, k, v).shape == q.shape
  np.testing.assert_allclose(blocked(q, k, v), dense(q, k, v), atol=1e-6)
  grad = lambda f: jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(grad(blocked), grad(dense)):
    np.testing.assert_allclose(g, w, atol=1e-5)
