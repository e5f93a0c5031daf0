"""Step benchmark: the compiled train step alone (synthetic batch already on device) and fed by the real
pipeline; prints JSON with step time, images/s, tokens/s, model TFLOP/s, MFU and where the time goes.

  python -m tools.bench --config=configs/vitb16_mmc4.py:runlocal --steps=10
  python -m tools.bench --preset=cpu-small --steps=10        # the shape used to compare implementations on a CPU
  python -m tools.bench --config=configs/vitb16_mmc4.py --config.data.rows_per_batch=... --pipeline=false

MFU is against the device's peak from lcl_jax.metrics' table, or on CPU against a large float32 matmul measured in
the same run. The ViT / decoder / LM head / contrastive shares come from timing each part's compiled forward + backward
on the same batch (they do not add up to the fused step exactly; the shares are of their sum).
"""
import functools
import json
import sys
import time

from absl import app, flags
from ml_collections import config_flags


def cpu_small_config():
  """Images 112 px, patch 16; ViT 384 wide, 6 layers, 6 heads; decoder 384, 6 layers, 6 heads, MLP 1536;
  L = 512; vocabulary 32000; 8 rows per step with exactly 2 images each; float32; LM head in blocks of 128."""
  from configs import vitb16_mmc4
  config = vitb16_mmc4.get_config()
  v, d = config.model.vit, config.model.decoder
  v.update(width=384, depth=6, num_heads=6, mlp_dim=1536, patch_size=16, image_size=112, drop_path_rate=0.0)
  d.update(width=384, depth=6, num_heads=6, mlp_dim=1536, vocab_size=32000, max_len=512)
  config.model.update(embed_dim=384, pool_heads=6, dtype="float32")
  config.data.update(seq_len=512, rows_per_batch=8, images_per_batch=16)
  config.loss.lm_block_size = 128  # one 8 x 512 chunk: smaller blocks waste fewer positions (3328 for 3288 targets)
  config.sharding.mesh = dict(data=-1, fsdp=1, tensor=1)
  return config


def synthetic_batch(config, num_chunks, seed=0):
  """Rows of `<s> text [span] text ... </s>` with images spread evenly: exactly images/rows spans per row, each
  after some text (so every image is valid for the contrastive loss)."""
  import numpy as np
  from data_pipelines import batch_spec
  m = config.model
  st = m.special_tokens
  batch = batch_spec.zeros(batch_spec.batch_spec(config, num_chunks))
  (rows, seq_len), slots = batch["tokens"].shape, len(batch["image_valid"])
  k = batch_spec.patches_per_image(m.vit)
  per_row = slots // rows
  rng = np.random.default_rng(seed)
  first_text = max(st.values()) + 1
  tokens = batch["tokens"]
  tokens[:] = rng.integers(first_text, m.decoder.vocab_size, (rows, seq_len))
  gap = (seq_len - 2 - per_row * (k + 2)) // (per_row + 1)
  if gap < 1:
    raise ValueError(f"{per_row} image spans of {k + 2} tokens do not fit seq_len {seq_len} with text.")
  tokens[:, 0], tokens[:, -1] = st["bos"], st["eos"]
  for j in range(per_row):
    start = 1 + gap * (j + 1) + j * (k + 2)
    tokens[:, start] = st["boi"]
    tokens[:, start + 1:start + 1 + k] = st["img"]
    tokens[:, start + 1 + k] = st["eoi"]
  batch["segment_ids"][:] = 1
  batch["positions"][:] = np.arange(seq_len)
  batch["images"][:] = rng.integers(0, 256, batch["images"].shape, dtype=np.uint8)
  batch["image_valid"][:] = True
  return batch


def _time(fn, *args, steps):
  import jax
  jax.block_until_ready(fn(*args))  # warm-up (and compile)
  start = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def component_seconds(config, state, batch, num_chunks, steps):
  """Forward + backward time of the ViT (+ pool), the decoder's blocks, the LM head with its loss (on fixed hidden
  states) and the contrastive loss (on fixed features), each compiled alone."""
  import jax
  import jax.numpy as jnp
  from lcl_jax import losses, models
  model = models.LCL(config.model)
  params = state.params
  st = dict(config.model.special_tokens)

  def vit(p):
    z, v = model.apply({"params": p}, batch["images"], method=models.LCL.encode_images)
    return jnp.sum(z.astype(jnp.float32)) + jnp.sum(v)

  def decoder(p):
    def f(m):
      return m.decoder(m.decoder.embed(batch["tokens"]), batch["segment_ids"], batch["positions"])
    return jnp.sum(nn_apply(model, f)({"params": p}).astype(jnp.float32))

  out = jax.jit(lambda p: model.apply({"params": p}, batch, num_chunks=num_chunks, compute_logits=False))(params)

  def lm_head(hidden, head):
    return losses.next_token_loss_on_targets(hidden, head, batch["tokens"], batch["segment_ids"], st,
                                             num_chunks=num_chunks, block_size=config.loss.lm_block_size)[0]

  def contrastive(v, t, scale):
    return losses.contrastive_loss(v, t, out["contrastive_valid"], scale)[0]

  return {
      "vit": _time(jax.jit(jax.grad(vit)), params, steps=steps),
      "decoder": _time(jax.jit(jax.grad(decoder)), params, steps=steps),
      "lm_head": _time(jax.jit(jax.grad(lm_head, argnums=(0, 1))), out["hidden"], out["lm_head"], steps=steps),
      "contrastive": _time(jax.jit(jax.grad(contrastive, argnums=(0, 1, 2))), out["v"], out["t"],
                           out["logit_scale"], steps=steps),
  }


def nn_apply(model, fn):
  import flax.linen as nn
  return nn.apply(fn, model)


def main(argv):
  del argv
  if _PRESET.value == "cpu-small":
    config = cpu_small_config()
  elif _CONFIG.value is not None:
    config = _CONFIG.value
  else:
    raise app.UsageError("Pass --config=CONFIG[:runlocal] or --preset=cpu-small.")
  result = bench(config, steps=_STEPS.value, name=_PRESET.value or config.name,
                 with_pipeline=_PIPELINE.value and not _PRESET.value)
  json.dump(result, sys.stdout, indent=2)
  print()


def bench(config, *, steps, name, with_pipeline):
  """-> the benchmark's JSON-able result for `config`."""
  import flax.linen as nn
  import jax
  from lcl_jax import losses, metrics, sharding, state as state_lib, train, train_step as ts
  config.model.decoder.max_len = max(config.model.decoder.max_len, config.data.seq_len)
  mesh = sharding.make_mesh(config.sharding.mesh)
  shards = sharding.num_data_shards(mesh)
  spec = state_lib.state_spec(config, mesh)
  step_fn = functools.partial(ts.train_step, model=spec.model, tx=spec.tx, loss_config=config.loss,
                              special_tokens=dict(config.model.special_tokens), mesh=mesh, num_chunks=shards,
                              accum_steps=config.optim.grad_accum_steps)
  host_batch = synthetic_batch(config, shards)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
    state = jax.jit(lambda: nn.unbox(spec.init_fn()), out_shardings=spec.shardings)()
    step = jax.jit(step_fn, in_shardings=(spec.shardings, sharding.data_sharding(mesh)),
                   out_shardings=(spec.shardings, None))
    batch = train.global_batch(host_batch, sharding.batch_shardings(mesh, sharding.rules(config)))
    seconds = _time(lambda s: step(s, batch)[0], state, steps=steps)
    parts = component_seconds(config, state, batch, shards, max(2, steps // 3))

  computed, useful = losses.lm_head_positions(host_batch["tokens"], host_batch["segment_ids"],
                                              dict(config.model.special_tokens), num_chunks=shards,
                                              block_size=config.loss.lm_block_size)
  flops, useful_flops = (metrics.model_flops_per_step(
      config.model, rows=config.data.rows_per_batch, image_slots=config.data.images_per_batch,
      seq_len=config.data.seq_len, generation=bool(config.loss.generation_weight), lm_positions=n)
      for n in (computed, useful))
  peak, peak_source = metrics.device_peak_flops()
  images = config.data.images_per_batch
  result = {
      "config": name, "devices": mesh.size,
      "device_kind": jax.devices()[0].device_kind, "dtype": config.model.dtype,
      "image_size": config.model.vit.image_size, "seq_len": config.data.seq_len,
      "rows_per_step": config.data.rows_per_batch, "images_per_step": images,
      "step_seconds": seconds, "images_per_sec": images / seconds,
      "tokens_per_sec": config.data.rows_per_batch * config.data.seq_len / seconds,
      "model_tflops_per_step": flops / 1e12, "model_tflops_per_sec": flops / seconds / 1e12,
      "peak_tflops_per_device": peak / 1e12, "peak_source": peak_source,
      "mfu": flops / (seconds * mesh.size * peak),
      "useful_mfu": useful_flops / (seconds * mesh.size * peak),
      "useful_tflops_per_step": useful_flops / 1e12,
      "lm_head": {"positions": config.data.rows_per_batch * config.data.seq_len, "computed": computed,
                  "targets": useful, "computed_tflops": metrics.lm_head_flops(config.model, computed) / 1e12,
                  "useful_tflops": metrics.lm_head_flops(config.model, useful) / 1e12},
      "time_share": {k: v / sum(parts.values()) for k, v in parts.items()},
      "component_seconds": parts,
  }
  if with_pipeline:
    result["with_pipeline"] = pipeline_seconds(config, state, step, mesh, shards, steps)
  return result


def pipeline_seconds(config, state, step, mesh, shards, steps):
  """Steps fed by the configured pipeline through train.device_batches (the pipeline's thread prefetches)."""
  import jax
  from data_pipelines import pipeline
  from lcl_jax import sharding, train
  data = pipeline.Pipeline(config, num_chunks=shards * config.optim.grad_accum_steps,
                           process_index=jax.process_index(), process_count=jax.process_count())
  batches = train.device_batches(data, sharding.batch_shardings(mesh, sharding.rules(config)))
  batch = next(batches)[0]
  state, _ = step(state, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    batch = next(batches)[0]
    state, _ = step(state, batch)
  jax.block_until_ready(state)
  seconds = (time.perf_counter() - start) / steps
  data.close()
  return {"step_seconds": seconds, "images_per_sec": config.data.images_per_batch / seconds}


if __name__ == "__main__":
  # Flags exist only when this module runs as the program: importing it (tests) must not claim flag names.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, path[:arg].", lock_config=True)
  _PRESET = flags.DEFINE_enum("preset", None, ["cpu-small"], "A fixed benchmark shape instead of --config.")
  _STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after one warm-up step).")
  _PIPELINE = flags.DEFINE_boolean("pipeline", True, "Also time steps fed by the configured data pipeline.")
  app.run(main)
