"""Throughput of this host's pipeline, as JSON: documents, rows and decoded images per second, total and per core.

  python -m tools.data_bench --config=configs/vitb16_mmc4.py:runlocal [--seconds=30]
  # ViT-L/14-sized rows and images on the demo corpus (224 px, L = 2048):
  python -m tools.data_bench --config=configs/vitl14_laion_mmc4.py:runlocal --config.model.vit.image_size=224 \\
      --config.model.vit.patch_size=14 --config.data.seq_len=2048 --config.data.rows_per_batch=64 \\
      --config.data.images_per_batch=320
  # Also time the transform alone on photo-like JPEGs of a given longer side (the demo's images are 32 px):
  python -m tools.data_bench --config=... --jpeg_side=500

Start-up and `--warmup_batches` are timed apart; the rates count what the batches deliver (valid images, rows with
content, documents with tokens in them). "per_core" divides by the CPU cores this process may use. `cpu_busy` is the
process's CPU time over wall time per core: near 1 means CPU-bound, so more cores would help; well below it means the
pipeline waits (on storage, on its one row-building thread, or on other processes: `load_average_1min` above the
core count means the cores were shared while measuring). Only the JSON goes to stdout.
"""
import io
import json
import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from data_pipelines import augment
from data_pipelines import pipeline
from data_pipelines import sampling


def cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def _rates(count: float, seconds: float, n_cores: int) -> dict:
  return {"total": round(count / seconds, 2), "per_core": round(count / seconds / n_cores, 2)}


def bench_pipeline(config, *, seconds: float, warmup_batches: int = 2, num_chunks: int = 1) -> dict:
  config.model.decoder.max_len = max(config.model.decoder.max_len, config.data.seq_len)
  n_cores = cores()
  start = time.perf_counter()
  data = pipeline.Pipeline(config, num_chunks=num_chunks)
  try:
    for _ in range(warmup_batches):
      next(data)
    startup = time.perf_counter() - start
    totals = dict(batches=0, documents=0.0, rows=0.0, images=0.0, pad_rows=0.0, pad_slots=0.0)
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    while time.perf_counter() - t0 < seconds or not totals["batches"]:
      _, metrics = next(data)
      totals["batches"] += 1
      totals["documents"] += sum(v for k, v in metrics.items() if k.startswith("documents/"))
      totals["rows"] += metrics["rows"]
      totals["images"] += metrics["valid_images"]
      totals["pad_rows"] += metrics["padding_fraction/rows"]
      totals["pad_slots"] += metrics["padding_fraction/image_slots"]
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
  finally:
    data.close()
  vit, d = config.model.vit, config.data
  batches = totals["batches"]
  return {
      "config": config.get("name", ""), "sources": dict(d.sources), "image_size": vit.image_size,
      "patch_size": vit.patch_size, "patches_per_image": data.patches, "seq_len": d.seq_len,
      "rows_per_batch": d.rows_per_batch, "images_per_batch": d.images_per_batch, "num_chunks": num_chunks,
      "cores": n_cores, "decode_threads": data.threads, "startup_s": round(startup, 2),
      "seconds": round(wall, 2), "batches": batches,
      "documents_per_s": _rates(totals["documents"], wall, n_cores),
      "rows_per_s": _rates(totals["rows"], wall, n_cores),
      "images_per_s": _rates(totals["images"], wall, n_cores),
      "cpu_busy": round(cpu / wall / n_cores, 3),
      "load_average_1min": round(os.getloadavg()[0], 2),  # other processes competing for the same cores
      "padding_fraction": {"rows": round(totals["pad_rows"] / batches, 4),
                           "image_slots": round(totals["pad_slots"] / batches, 4)},
  }


def bench_transform(image_size: int, side: int, seconds: float = 5.0) -> dict:
  """The train transform alone on a photo-like JPEG (side x 3/4 side, quality 90), on all cores."""
  import concurrent.futures  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  height = side * 3 // 4
  rng = np.random.default_rng(0)
  pixels = np.clip(np.linspace(0, 255, side)[None, :, None] * np.linspace(0.3, 1, height)[:, None, None]
                   + rng.normal(0, 12, (height, side, 3)), 0, 255).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="JPEG", quality=90)
  data, n_cores = out.getvalue(), cores()

  def work(worker):
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
      augment.load(data, image_size, sampling.generator("bench", worker, count))
      count += 1
    return count

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(n_cores) as pool:
    count = sum(pool.map(work, range(n_cores)))
  wall = time.perf_counter() - t0
  return {"jpeg": f"{side}x{height}", "jpeg_bytes": len(data), "image_size": image_size,
          "images_per_s": _rates(count, wall, n_cores)}


def _cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system


def main(argv):
  del argv
  config = _CONFIG.value
  result = bench_pipeline(config, seconds=_SECONDS.value, warmup_batches=_WARMUP_BATCHES.value,
                          num_chunks=_NUM_CHUNKS.value)
  if _JPEG_SIDE.value:
    result["transform_only"] = bench_transform(config.model.vit.image_size, _JPEG_SIDE.value)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  # Flags exist only when this module runs as the program: importing it must not claim flag names.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, path[:arg].", lock_config=True)
  _SECONDS = flags.DEFINE_float("seconds", 30.0, "How long to measure, after the warm-up.")
  _WARMUP_BATCHES = flags.DEFINE_integer("warmup_batches", 2, "Batches read before measuring.")
  _NUM_CHUNKS = flags.DEFINE_integer("num_chunks", 1, "Chunks per batch (data shards x micro-batches).")
  _JPEG_SIDE = flags.DEFINE_integer("jpeg_side", 0, "If > 0, also time the train transform alone on JPEGs of this "
                                    "longer side (4:3), one thread per core.")
  flags.mark_flags_as_required(["config"])
  app.run(main)
