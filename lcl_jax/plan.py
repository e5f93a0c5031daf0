"""Plan a run before paying for it: compile the real train step ahead of time for a mesh of fake CPU devices and
print per-device memory, model FLOPs, collective traffic and the predicted time to train.

  python -m lcl_jax.plan --config=configs/vitl14_laion_mmc4.py --mesh=data:256 --device_kind=tpu_v5p
  python -m lcl_jax.plan --config=configs/vitl14_laion_mmc4.py --mesh=data:64,fsdp:8 --device_kind=h200 --fit

Memory comes from XLA's memory analysis of the CPU compilation of the same SPMD program (per device: arguments =
params + optimizer state + batch shard, temporaries = activations and workspace); an accelerator's compiler fuses
differently, so treat it as an estimate with ~10-20% slack. --fit doubles the per-device batch until it no longer
fits the device's memory and reports the largest that does.
"""
import json
import math
import os
import re
import sys
import time

from absl import app, flags
from ml_collections import config_flags


_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                "f64": 8, "s64": 8, "u64": 8}


def define_flags():
  """Flags exist only when this module runs as the program: importing it (tests) must not claim flag names."""
  global _CONFIG, _MESH, _DEVICE, _MFU, _ROWS, _IMAGES, _FIT
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, path[:runlocal].", lock_config=True)
  _MESH = flags.DEFINE_string("mesh", "data:8", "Mesh as axis:size pairs, e.g. data:64,fsdp:4 (axes data, fsdp, "
                              "tensor).")
  _DEVICE = flags.DEFINE_string("device_kind", "tpu_v5p", "Target device: tpu_v6e, tpu_v5p, tpu_v5e, tpu_v4, b200, "
                                "h200, h100, a100.")
  _MFU = flags.DEFINE_float("mfu", 0.4, "Model FLOPs utilisation assumed for the time prediction.")
  _ROWS = flags.DEFINE_integer("rows_per_device", None, "Override: rows per data shard (default: the config's).")
  _IMAGES = flags.DEFINE_integer("images_per_device", None, "Override: image slots per data shard.")
  _FIT = flags.DEFINE_boolean("fit", False, "Search the largest per-device batch that fits the device memory.")
  flags.mark_flags_as_required(["config"])


def parse_mesh(text: str) -> dict:
  mesh = {}
  for part in text.split(","):
    name, _, size = part.partition(":")
    if name not in ("data", "fsdp", "tensor") or not size.isdigit():
      raise app.UsageError(f"--mesh={text!r}: use axis:size pairs over data, fsdp, tensor, e.g. data:64,fsdp:4.")
    mesh[name] = int(size)
  return mesh


def collective_bytes(hlo_text: str) -> dict:
  """Bytes produced per device by each kind of collective in a compiled HLO module (result shapes)."""
  totals = {}
  for line in hlo_text.splitlines():
    m = re.search(r"=\s*(\(?[^=]*?\)?)\s+(" + "|".join(_COLLECTIVES) + r")(-start)?\(", line)
    if not m:
      continue
    shapes = re.findall(r"(\w+)\[([\d,]*)\]", m.group(1))
    size = sum(_DTYPE_BYTES.get(t, 4) * math.prod(int(d) for d in dims.split(",") if d) for t, dims in shapes)
    totals[m.group(2)] = totals.get(m.group(2), 0) + size
  return totals


def compile_step(config, mesh):
  """The train step compiled AOT exactly as train.py builds it -> (compiled, StateSpec)."""
  import functools
  import flax.linen as nn
  import jax
  from lcl_jax import sharding, state as state_lib, train_step as ts
  spec = state_lib.state_spec(config, mesh)
  step_fn = functools.partial(ts.train_step, model=spec.model, tx=spec.tx, loss_config=config.loss,
                              special_tokens=dict(config.model.special_tokens), mesh=mesh,
                              num_chunks=sharding.num_data_shards(mesh),
                              accum_steps=config.optim.grad_accum_steps, lr_schedule=spec.schedule)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
    compiled = jax.jit(step_fn, in_shardings=(spec.shardings, sharding.data_sharding(mesh)),
                       out_shardings=(spec.shardings, None), donate_argnums=0).lower(
                           spec.abstract, spec.batch).compile()
  return compiled, spec


def plan_once(config, mesh, device_name, peak, memory_gib, mfu):
  import jax
  import numpy as np
  from lcl_jax import metrics, sharding
  start = time.time()
  compiled, spec = compile_step(config, mesh)
  mem = compiled.memory_analysis()
  shards = sharding.num_data_shards(mesh)

  def per_device_bytes(tree):
    return int(sum(np.prod(s.sharding.shard_shape(s.shape)) * s.dtype.itemsize for s in jax.tree.leaves(tree)))

  params = int(sum(np.prod(s.shape) for s in jax.tree.leaves(spec.abstract.params)))
  flops = metrics.model_flops_per_step(config.model, rows=config.data.rows_per_batch,
                                       image_slots=config.data.images_per_batch, seq_len=config.data.seq_len,
                                       generation=bool(config.loss.generation_weight))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  step_seconds = flops / (mesh.size * peak * mfu)
  total = mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes
  # Donated state: outputs alias arguments, so only outputs beyond the arguments add up.
  total += max(0, mem.output_size_in_bytes - mem.alias_size_in_bytes)
  gib = 2.0 ** 30
  return {
      "mesh": dict(mesh.shape), "devices": mesh.size, "device_kind": device_name,
      "rows_per_device": config.data.rows_per_batch // shards,
      "images_per_device": config.data.images_per_batch // shards,
      "global_rows": config.data.rows_per_batch, "global_image_slots": config.data.images_per_batch,
      "seq_len": config.data.seq_len, "parameters": params,
      "memory_per_device_gib": {
          "params": per_device_bytes(spec.abstract.params) / gib,
          "optimizer": per_device_bytes(spec.abstract.opt_state) / gib,
          "arguments": mem.argument_size_in_bytes / gib,
          "activations_and_temporaries": mem.temp_size_in_bytes / gib,
          "total": total / gib, "device_memory": memory_gib, "fits": total / gib <= memory_gib},
      "model_flops_per_step": flops,
      "model_flops_per_image_slot": flops / config.data.images_per_batch,
      # XLA's cost analysis counts a scanned loop body once, so it only matches unscanned models.
      "xla_flops_per_step": (float(cost.get("flops", float("nan"))) * mesh.size
                             if cost and not (config.model.vit.scan_layers or config.model.decoder.scan_layers)
                             else None),
      "collective_bytes_per_device_per_step": collective_bytes(compiled.as_text()),
      "assumed_mfu": mfu, "peak_flops_per_device": peak,
      "predicted_step_seconds": step_seconds,
      "predicted_days": step_seconds * config.optim.total_steps / 86400,
      "total_steps": config.optim.total_steps, "compile_seconds": time.time() - start,
  }


def main(argv):
  del argv
  mesh_shape = parse_mesh(_MESH.value)
  devices = math.prod(mesh_shape.values())
  # Fake CPU devices for the target mesh: must be set before jax initialises its backends.
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  from lcl_jax import metrics, sharding
  target = metrics.device_spec(_DEVICE.value)
  if target is None:
    raise app.UsageError(f"--device_kind={_DEVICE.value!r} unknown; use one of {[d[0] for d in metrics.DEVICES]}.")
  name, peak, memory_gib = target
  config = _CONFIG.value
  config.sharding.mesh = {**dict(data=1, fsdp=1, tensor=1), **mesh_shape}
  mesh = sharding.make_mesh(config.sharding.mesh)
  shards = sharding.num_data_shards(mesh) * config.optim.grad_accum_steps
  rows = _ROWS.value or config.data.rows_per_batch // shards
  images = _IMAGES.value or config.data.images_per_batch // shards
  if rows < 1 or images < 1:
    raise app.UsageError(f"The config's batch gives {rows} rows and {images} images per data shard; pass "
                         "--rows_per_device and --images_per_device.")

  def plan_for(r, i):
    config.data.rows_per_batch, config.data.images_per_batch = r * shards, i * shards
    return plan_once(config, mesh, name, peak, memory_gib, _MFU.value)

  result = plan_for(rows, images)
  if _FIT.value:
    # Keep the config's images-per-row ratio; halve or double until the boundary, then report the largest fit.
    r, i, fit, tried = rows, images, result if result["memory_per_device_gib"]["fits"] else None, []
    while (fit is None) and r > 1:
      r, i = max(1, r // 2), max(1, i // 2)
      fit = plan_for(r, i) if plan_for(r, i)["memory_per_device_gib"]["fits"] else None
    while fit is not None and fit["rows_per_device"] == r:
      candidate = plan_for(r * 2, i * 2)
      tried.append({"rows_per_device": r * 2, "images_per_device": i * 2,
                    "total_gib": candidate["memory_per_device_gib"]["total"]})
      if not candidate["memory_per_device_gib"]["fits"]:
        break
      fit, r, i = candidate, r * 2, i * 2
    result["largest_fitting_batch"] = None if fit is None else {
        "rows_per_device": fit["rows_per_device"], "images_per_device": fit["images_per_device"],
        "total_gib": fit["memory_per_device_gib"]["total"], "first_too_large": tried[-1] if tried else None}
  json.dump(result, sys.stdout, indent=2)
  print()


if __name__ == "__main__":
  define_flags()
  app.run(main)
