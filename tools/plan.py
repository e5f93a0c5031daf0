"""Plan a run before paying for it: compile the real train step ahead of time for a mesh of fake CPU devices and
print per-device memory, model FLOPs, collective traffic and the predicted time to train.

  python -m tools.plan --config=configs/vitl14_laion_mmc4.py --mesh=data:256 --device_kind=tpu_v5p
  python -m tools.plan --config=configs/vitl14_laion_mmc4.py --mesh=data:64,fsdp:8 --device_kind=h200 --fit

Memory comes from XLA's memory analysis of the CPU compilation of the same SPMD program (per device: arguments =
params + optimizer state + batch shard, temporaries = activations and workspace); an accelerator's compiler fuses
differently, so treat it as an estimate with ~10-20% slack. --fit doubles the per-device batch until it no longer
fits the device's memory and reports the largest that does.

Collectives (`collective_bytes_per_device_per_step`, per kind) are the bytes one device sends per step with ring
algorithms, read from the SPMD partitioner's output with the rewrites GPU and TPU compilers apply (an all-reduce cut
by a dynamic-slice is a reduce-scatter; tools.hlo_collectives), every loop body counted its trip count times.
Beside them, `collective_ideal_bytes_per_device_per_step` is the least the mesh needs: each parameter split over fsdp
gathered from its shards once per use (again in the backward pass of a rematerialised tower) and its gradient
reduce-scattered back, each gradient shard all-reduced once over the devices holding the same shard, parameters at
the compute dtype, plus the contrastive loss's gather of v and t [global image slots, embed_dim] float32 and the
reduce-scatter of their gradients; tensor-parallel activations and scalars are not in it. `collective_checks` lists
what breaks FSDP: gradients all-reduced whole, parameters not reduce-scattered, parameters gathered more than once
per use, and the bytes per iteration of loops whose trip count is known only at run time (counted once above).
"""
import glob
import json
import math
import os
import re
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

from lcl_jax import axes
from tools import hlo_collectives


def parse_mesh(text: str) -> dict:
  mesh = {}
  for part in text.split(","):
    name, _, size = part.partition(":")
    if name not in ("data", "fsdp", "tensor") or not size.isdigit():
      raise app.UsageError(f"--mesh={text!r}: use axis:size pairs over data, fsdp, tensor, e.g. data:64,fsdp:4.")
    mesh[name] = int(size)
  return mesh


def collective_bytes(hlo_text: str) -> dict:
  """Bytes produced per device by each kind of collective as the HLO text writes them (result shapes, each
  instruction once); plan reports hlo_collectives' reading instead (executions per step, accelerator rewrites)."""
  totals = {}
  for line in hlo_text.splitlines():
    m = re.search(r"=\s*(\(?[^=]*?\)?)\s+(" + "|".join(hlo_collectives.KINDS) + r")(-start)?\(", line)
    if not m:
      continue
    shapes = re.findall(r"(\w+)\[([\d,]*)\]", m.group(1))
    size = sum(hlo_collectives.shape_bytes((t, tuple(int(d) for d in dims.split(",") if d))) for t, dims in shapes)
    totals[m.group(2)] = totals.get(m.group(2), 0) + size
  return totals


def compile_step(config, mesh, *, partitioned_hlo: bool = False):
  """The train step compiled AOT exactly as train.py builds it -> (compiled, StateSpec), and with partitioned_hlo the
  SPMD partitioner's output as HLO text (None if the persistent compilation cache served the executable: XLA then
  partitions nothing), the program before any backend's own collective rewrites (tools.hlo_collectives)."""
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
    lowered = jax.jit(step_fn, in_shardings=(spec.shardings, sharding.data_sharding(mesh)),
                      out_shardings=(spec.shardings, None), donate_argnums=0).lower(spec.abstract, spec.batch)
  if not partitioned_hlo:
    return lowered.compile(), spec
  with tempfile.TemporaryDirectory(prefix="lcl_plan_hlo_") as dump:
    # XLA writes the module after the named pass, with the partition tables (large constants) that tell which slice
    # each device keeps; dump options change nothing in the compiled program.
    compiled = lowered.compile(compiler_options={"xla_dump_to": dump, "xla_dump_large_constants": True,
                                                 "xla_dump_hlo_pass_re": hlo_collectives.PARTITIONER_PASS})
    found = glob.glob(os.path.join(dump, f"*after_{hlo_collectives.PARTITIONER_PASS}*.txt"))
    text = open(found[0]).read() if len(found) == 1 else None
  return compiled, spec, text


def parameter_layouts(config, spec, mesh) -> list:
  """hlo_collectives.Param of every parameter: its per-device shapes and how it is split over fsdp."""
  import flax.linen as nn
  import jax
  from jax.sharding import PartitionSpec
  fsdp = mesh.shape.get("fsdp", 1)
  logical = jax.tree.leaves(nn.get_partition_spec(spec.boxed.params), is_leaf=lambda x: isinstance(x, PartitionSpec))
  leaves = jax.tree_util.tree_flatten_with_path(spec.abstract.params)[0]
  remat = {"vit": config.model.vit.remat, "decoder": config.model.decoder.remat}
  tied = "['decoder']['token_embed']['embedding']" if config.model.decoder.tie_embeddings else None
  accum = config.optim.grad_accum_steps  # A > 1: the feature pass of lcl_jax/train_step.py gathers once more
  params = []
  for (path, leaf), names in zip(leaves, logical):
    name = jax.tree_util.keystr(path)
    entries = tuple(leaf.sharding.spec) + (None,) * (len(leaf.shape) - len(leaf.sharding.spec))
    on_fsdp = [e == "fsdp" or (isinstance(e, tuple) and "fsdp" in e) for e in entries]
    shard = tuple(leaf.sharding.shard_shape(leaf.shape))
    tower = re.match(r"\['(\w+)'\]\['(block\w*)'\]", name)
    params.append(hlo_collectives.Param(
        path=name, shard=shard, local=tuple(d * fsdp if f else d for d, f in zip(shard, on_fsdp)),
        fsdp=fsdp if any(on_fsdp) else 1, layered=bool(names) and names[0] == axes.LAYERS,
        remat=bool(tower) and bool(remat.get(tower.group(1))),
        uses=accum * (2 if name == tied else 1), feature_uses=accum if accum > 1 else 0))
  return params


def collective_report(config, mesh, params, hlo_text: str, partitioned: bool) -> dict:
  """Measured vs ideal collective bytes per kind, and the FSDP checks (hlo_collectives)."""
  import jax.numpy as jnp
  mesh_shape = dict(mesh.shape)
  found = hlo_collectives.collectives(hlo_text, mesh_shape)
  ideal = hlo_collectives.ideal_wire_bytes(
      params, mesh_shape, param_bytes=jnp.dtype(config.model.dtype).itemsize,
      contrastive_rows=config.data.images_per_batch, embed_dim=config.model.embed_dim,
      micro_batches=config.optim.grad_accum_steps)
  gathers = hlo_collectives.parameter_gathers(found, params)
  dynamic = [c for c in found if not c.static_runs]
  return {
      "bytes": hlo_collectives.wire_bytes_by_kind(found),
      "ideal": ideal,
      "source": ("SPMD partitioner output; all-reduce + dynamic-slice pairs read as the reduce-scatters GPU/TPU "
                 "compilers make of them" if partitioned else
                 "CPU executable (the partitioner's output was not available): all-reduce + dynamic-slice pairs "
                 "fused by the CPU compiler stay all-reduces, bfloat16 all-reduces widened to float32"),
      # Gradients of fsdp-split parameters: all-reduces of a whole one (shape as sorted dims; `allowed`: parameters
      # not split over fsdp share the shape) and parameters no reduce-scatter over fsdp serves. Both empty is FSDP.
      "full_size_fsdp_gradient_all_reduces": [
          {"shape": list(k), "instructions": n, "allowed": w}
          for k, n, w in hlo_collectives.full_size_gradient_all_reduces(found, params)],
      "fsdp_params_not_reduce_scattered": hlo_collectives.not_reduce_scattered(found, params),
      # Per step over all fsdp-split parameters: gathers of the stored parameter / uses (one per layer, two with
      # remat); below 1 where XLA moves activations instead or gathers a product of the parameter.
      "fsdp_param_all_gathers_per_use": round(
          sum(g for g, _ in gathers.values()) / max(1, sum(e for _, e in gathers.values())), 3),
      "fsdp_params_gathered_more_than_once_per_use": sorted(p for p, (g, e) in gathers.items() if g > e),
      # A loop whose trip count is only known at run time is counted once; its bytes per iteration:
      "bytes_per_iteration_of_loops_with_run_time_trip_count": hlo_collectives.wire_bytes_by_kind(dynamic),
  }


def plan_once(config, mesh, device_name, peak, memory_gib, mfu):
  import jax
  import numpy as np
  from lcl_jax import metrics, sharding
  start = time.time()
  compiled, spec, partitioned = compile_step(config, mesh, partitioned_hlo=True)
  mem = compiled.memory_analysis()
  shards = sharding.num_data_shards(mesh)

  def per_device_bytes(tree):
    return int(sum(np.prod(s.sharding.shard_shape(s.shape)) * s.dtype.itemsize for s in jax.tree.leaves(tree)))

  params = int(sum(np.prod(s.shape) for s in jax.tree.leaves(spec.abstract.params)))
  shape = dict(rows=config.data.rows_per_batch, image_slots=config.data.images_per_batch,
               seq_len=config.data.seq_len)
  computed, useful = metrics.lm_positions_estimate(config.model, config.loss, **shape,
                                                   num_chunks=shards * config.optim.grad_accum_steps)
  flops, useful_flops = (metrics.model_flops_per_step(config.model, **shape,
                                                      generation=bool(config.loss.generation_weight),
                                                      lm_positions=n) for n in (computed, useful))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  collectives = collective_report(config, mesh, parameter_layouts(config, spec, mesh),
                                  partitioned or compiled.as_text(), partitioned is not None)
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
      # The LM head runs on target positions in blocks: computed = targets rounded up to blocks, useful = targets,
      # both for a step whose image slots are all filled (metrics.lm_positions_estimate).
      "model_flops_per_step": flops, "useful_model_flops_per_step": useful_flops,
      "model_flops_per_image_slot": flops / config.data.images_per_batch,
      "lm_head": {"positions": shape["rows"] * shape["seq_len"], "computed": computed, "targets": useful,
                  "computed_flops": metrics.lm_head_flops(config.model, computed),
                  "useful_flops": metrics.lm_head_flops(config.model, useful)},
      # XLA's cost analysis counts a loop body once (scanned blocks, the LM head's block loop): it matches
      # unscanned models whose LM head runs one block per chunk.
      "xla_flops_per_step": (float(cost.get("flops", float("nan"))) * mesh.size
                             if cost and not (config.model.vit.scan_layers or config.model.decoder.scan_layers)
                             else None),
      # Bytes one device sends per step (ring algorithms) in the program an accelerator runs, beside the least this
      # mesh needs: hlo_collectives.ideal_wire_bytes says what that counts.
      "collective_bytes_per_device_per_step": collectives.pop("bytes"),
      "collective_ideal_bytes_per_device_per_step": collectives.pop("ideal"),
      "collective_checks": collectives,
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
  # Flags exist only when this module runs as the program: importing it (tests) must not claim flag names.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, path[:arg].", lock_config=True)
  _MESH = flags.DEFINE_string("mesh", "data:8", "Mesh as axis:size pairs, e.g. data:64,fsdp:4 (axes data, fsdp, "
                              "tensor).")
  _DEVICE = flags.DEFINE_string("device_kind", "tpu_v5p", "Target device: tpu_v6e, tpu_v5p, tpu_v5e, tpu_v4, b200, "
                                "h200, h100, a100.")
  _MFU = flags.DEFINE_float("mfu", 0.4, "Model FLOPs utilisation assumed for the time prediction.")
  _ROWS = flags.DEFINE_integer("rows_per_device", None, "Override: rows per data shard (default: the config's).")
  _IMAGES = flags.DEFINE_integer("images_per_device", None, "Override: image slots per data shard.")
  _FIT = flags.DEFINE_boolean("fit", False, "Search the largest per-device batch that fits the device memory.")
  flags.mark_flags_as_required(["config"])
  app.run(main)
