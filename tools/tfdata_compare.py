"""Our batch stream against tf.data on three questions (docs/pipeline.md, "Why not tf.data for the batch stream").

    python -m tools.tfdata_compare [--images=300] [--pairs=3]    # ~1-2 min of CPU in all; prints one JSON object

(a) resume on another host count: a tf.data iterator checkpoint of `range(N).shard(P, h).shuffle().prefetch()` is
    saved on P = 2 hosts and restored into the P = 1 pipeline; we record what it does. Ours: row_stream.restore
    of two hosts' pipeline states on one host, and which documents the first batches after it hold.
(b) the training image transform on one core, images per CPU-second: our augment.load (Pillow, guarded decode,
    RandomResizedCrop box + fused bicubic resize) against the same decode / crop / bicubic resize in tf.image inside
    a tf.data map, both single-threaded, on the demo's JPEG / PNG digits (32 px) and on a 500x375 JPEG -> 224 px.
    Runs alternate A B A B; the numbers are per pair.
(c) iterator checkpoint: tf.train.Checkpoint(iterator=...) of a shuffled (buffer 1000 encoded images), decoded,
    batched, prefetched pipeline against json.dumps(Pipeline.get_state()): bytes and milliseconds.
"""
import glob
import io
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
import numpy as np
from PIL import Image



def _tf():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  return tf


def _one_core_options(tf):
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = False
  return options


# -- (a) ---------------------------------------------------------------------------------------------------------------
def host_count_change(tf, tmp):
  n, taken = 1000, 100
  def pipeline(hosts, host):
    ds = tf.data.Dataset.range(n).shard(hosts, host).shuffle(64, seed=0, reshuffle_each_iteration=False)
    return ds.prefetch(2)
  saved, seen = [], set()
  for host in range(2):
    it = iter(pipeline(2, host))
    seen |= {int(next(it)) for _ in range(taken)}
    saved.append(tf.train.Checkpoint(iterator=it).write(os.path.join(tmp, f"host{host}")))
  results = {"setup": f"range({n}).shard(P, h).shuffle(64).prefetch(2); {taken} elements read on each of P = 2 "
                      "hosts; host 0's checkpoint restored into the pipeline of new host 0",
             "merge_two_checkpoints": "no API: one iterator restores one checkpoint"}
  for new_hosts in (1, 4):
    it = iter(pipeline(new_hosts, 0))
    try:
      tf.train.Checkpoint(iterator=it).read(saved[0]).assert_consumed()
      rest = [int(x) for x in it]
      results[f"to_{new_hosts}_hosts"] = dict(
          restored=True, elements_after=len(rest),
          owned_by_other_new_hosts=sum(x % new_hosts != 0 for x in rest),  # new host 0 owns x % P' == 0
          read_before_by_old_host_1=len(seen & set(rest)),
          owned_and_never_read=len({x for x in range(0, n, new_hosts)} - seen - set(rest)))
    except Exception as e:  # pylint: disable=broad-except  # what tf.data says is the point
      results[f"to_{new_hosts}_hosts"] = dict(restored=False, error=f"{type(e).__name__}: "
                                              + " ".join(str(e).split())[-300:])
  return results


def ours_host_count_change(block_docs):
  from configs import vitb16_mmc4  # pylint: disable=import-outside-toplevel
  from data_pipelines import pipeline  # pylint: disable=import-outside-toplevel
  config = vitb16_mmc4.get_config("runlocal")
  config.data.block_docs = block_docs
  before, states = set(), []
  for host in range(2):
    data = pipeline.Pipeline(config, num_chunks=2, process_index=host, process_count=2)
    for _ in range(5):
      _, _, info = data.next_with_info()
      before |= {d for row in info if row for d in row["doc_ids"]}
    states.append(data.get_state())
    data.close()
  data = pipeline.Pipeline(config, num_chunks=2, process_index=0, process_count=1)
  data.set_state(states)
  after, done = [], False
  for _ in range(400):  # to the end of epoch 0
    _, _, info = data.next_with_info()
    for row in info:
      if row and row["epoch"] > 0:
        done = True
      elif row:
        after += row["doc_ids"]
    if done:
      break
  skipped = {k: v for k, v in data.get_state().items() if k.startswith("skipped/")}
  data.close()
  return {"setup": f"vitb16_mmc4:runlocal, block_docs {block_docs}: 5 batches on each of 2 hosts, "
                   "set_state(both states) on 1 host, read to the end of the epoch",
          "documents_before": len(before), "documents_after_in_epoch": len(after),
          "read_again": len(before & set(after)), "never_read_in_epoch": len(set(states_docs(data)) - before - set(after)),
          "skipped_by_row_building": skipped, "state_keys": len(states[0]), "state_bytes": len(json.dumps(states[0]))}


def states_docs(data):
  """Every document id of the MMC4 split (the epoch's whole set)."""
  docs = data.documents["lcl_mmc4"]
  ids = [d["doc_id"] for d in docs.get(list(range(len(docs))))]
  return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


# -- (b) ---------------------------------------------------------------------------------------------------------------
def _web_jpeg():
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:375, 0:500]
  rgb = np.stack([(x * 0.5 + y * 0.2) % 256, (y * 0.6) % 256, (x * y * 0.001) % 256], -1)
  rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(rgb).save(out, "JPEG", quality=90)
  return out.getvalue()


def transform_speed(tf, datas, size, pairs):
  from data_pipelines import augment, sampling  # pylint: disable=import-outside-toplevel
  boxes = []
  for j, data in enumerate(datas):  # the same torchvision-style box for both
    w, h = Image.open(io.BytesIO(data)).size
    boxes.append(augment.random_resized_crop(w, h, sampling.generator("bench", j)))

  def ours():
    for j, data in enumerate(datas):
      augment.load(data, size, sampling.generator("bench", j))

  boxes_t = np.asarray([[t, l, b - t, r - l] for l, t, r, b in boxes], np.int32)
  def tf_map(data, box):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.crop_to_bounding_box(image, box[0], box[1], box[2], box[3])
    image = tf.image.resize(image, (size, size), method="bicubic", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  ds = tf.data.Dataset.from_tensor_slices((datas, boxes_t)).map(tf_map, num_parallel_calls=1)
  ds = ds.with_options(_one_core_options(tf))

  def theirs():
    for _ in ds:
      pass

  theirs(); ours()  # warm-up: graph tracing, imports, caches
  runs = {"pillow": [], "tf_data": []}
  for _ in range(pairs):
    for name, fn in (("pillow", ours), ("tf_data", theirs)):
      cpu, wall = time.process_time(), time.perf_counter()
      fn()
      cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
      runs[name].append({"images_per_cpu_s": round(len(datas) / cpu, 1), "images_per_wall_s": round(len(datas) / wall, 1),
                         "cores_busy": round(cpu / wall, 2)})
  ratio = [round(a["images_per_cpu_s"] / b["images_per_cpu_s"], 2) for a, b in zip(runs["pillow"], runs["tf_data"])]
  return dict(images=len(datas), size=size, runs=runs, pillow_over_tf_data_per_pair=ratio)


# -- (c) ---------------------------------------------------------------------------------------------------------------
def _dir_bytes(prefix):
  return sum(os.path.getsize(p) for p in glob.glob(prefix + "*"))


def checkpoint_cost(tf, datas, tmp):
  def decode(data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.image.resize(image, (32, 32), method="bicubic")
  ds = tf.data.Dataset.from_tensor_slices(datas).repeat().shuffle(1000, seed=0).map(decode).batch(32).prefetch(2)
  it = iter(ds)
  for _ in range(40):
    next(it)
  ckpt, times = tf.train.Checkpoint(iterator=it), []
  for k in range(3):
    t = time.perf_counter()
    path = ckpt.write(os.path.join(tmp, f"it{k}"))
    times.append((time.perf_counter() - t) * 1000)
  restore = time.perf_counter()
  tf.train.Checkpoint(iterator=iter(ds)).read(path)
  restore = (time.perf_counter() - restore) * 1000
  encoded = sum(len(d) for d in datas)
  tf_result = {"setup": f"{len(datas)} encoded demo images ({encoded} bytes), repeat().shuffle(1000).map(decode, 32 px)"
                        ".batch(32).prefetch(2), 40 batches in", "bytes": _dir_bytes(path),
               "write_ms": [round(x, 1) for x in times], "restore_ms": round(restore, 1)}

  from configs import vitb16_mmc4  # pylint: disable=import-outside-toplevel
  from data_pipelines import pipeline  # pylint: disable=import-outside-toplevel
  data = pipeline.Pipeline(vitb16_mmc4.get_config("runlocal"), num_chunks=1)
  for _ in range(40):
    next(data)
  times = []
  for _ in range(3):
    t = time.perf_counter()
    text = json.dumps(data.get_state())
    times.append((time.perf_counter() - t) * 1000)
  data.close()
  t = time.perf_counter()
  fresh = pipeline.Pipeline(vitb16_mmc4.get_config("runlocal"), num_chunks=1)
  fresh.set_state([json.loads(text)])
  next(fresh)
  restore = (time.perf_counter() - t) * 1000
  fresh.close()
  ours = {"setup": "Pipeline(vitb16_mmc4:runlocal).get_state() after 40 batches, json.dumps",
          "bytes": len(text.encode()), "write_ms": [round(x, 3) for x in times],
          "restore_and_first_batch_ms": round(restore, 1)}
  return {"tf_data": tf_result, "ours": ours}


def main(argv):
  del argv
  tf = _tf()
  from data_pipelines import demo  # pylint: disable=import-outside-toplevel
  paths = demo.ensure_demo()
  files = sorted(glob.glob(os.path.join(os.path.dirname(paths.data_dir), "raw", "mmc4_images", "*")))
  datas = [open(f, "rb").read() for f in files[:_IMAGES.value]]
  kinds = {}
  for f in files[:_IMAGES.value]:
    kinds[os.path.splitext(f)[1]] = kinds.get(os.path.splitext(f)[1], 0) + 1
  out = {"date": time.strftime("%Y-%m-%d"), "cores": len(os.sched_getaffinity(0)),
         "load_average_1min": round(os.getloadavg()[0], 2), "tensorflow": tf.__version__,
         "pillow": Image.__version__}
  with tempfile.TemporaryDirectory() as tmp:
    out["a_host_count_change"] = {"tf_data": host_count_change(tf, tmp), "ours_block_512": ours_host_count_change(512),
                                   "ours_block_16": ours_host_count_change(16)}
    out["b_transform_one_core"] = {
        "demo_digits_32px": dict(transform_speed(tf, datas, 32, _PAIRS.value), files=kinds),
        "web_jpeg_500x375_to_224px": transform_speed(tf, [_web_jpeg()] * 100, 224, _PAIRS.value)}
    out["c_iterator_checkpoint"] = checkpoint_cost(tf, datas, tmp)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  # Flags exist only when this module runs as the program: importing it must not claim flag names.
  _IMAGES = flags.DEFINE_integer("images", 300, "demo images per timed run")
  _PAIRS = flags.DEFINE_integer("pairs", 3, "A/B pairs per transform measurement")
  app.run(main)
