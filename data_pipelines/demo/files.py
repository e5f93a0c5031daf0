"""The demo corpus on disk: digit images rendered and written in the raw formats users hold (docs/formats.md).

Every writer is byte-deterministic (fixed zip/tar member dates and owners, no timestamps), so two builds of the
same corpus give identical files. The dirt written on purpose (failed downloads, a cut-off JSON line, LAION samples
missing their caption or image, grayscale PNGs) is what the real readers must survive; the writers return how much
of it they wrote, so the build report can be checked against it.
"""
import dataclasses
import hashlib
import io
import json
import os
import tarfile
import zipfile

import numpy as np
from PIL import Image

from data_pipelines.demo import docs as demo_docs
from data_pipelines.demo import text as demo_text

IMAGE_SIZE = 32
HOLDOUT_FRACTION = 0.2
MMC4_SHARDS = 3                 # shard 1 stays plain jsonl, the others are zipped (both occur in the wild)
LAION_SHARD_SIZE = 500
MISSING_IMAGE_P = 0.03          # failed downloads: image_info entries whose file never arrived
GRAY_PNG_P = 0.3                # of black-ink images: stored as 8-bit grayscale PNG (the readers convert to RGB)
RGB_PNG_P = 0.1                 # of the rest: RGB PNG instead of JPEG
JPEG_QUALITY = 90
INK_P = {"black": 0.35, "blue": 0.25, "red": 0.1, "green": 0.1, "purple": 0.1, "brown": 0.1}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member dates: the same corpus gives the same bytes
LAION_NO_IMAGE = frozenset({(0, 3)})    # (shard, sample) written without image
LAION_NO_CAPTION = frozenset({(0, 7)})  # (shard, sample) written without caption (txt absent, json caption null)


@dataclasses.dataclass
class Digits:
  """All 1797 digits as the corpus draws them, before any file encoding, and the held-out split."""
  images: np.ndarray   # uint8 [1797, 32, 32, 3]
  labels: np.ndarray   # int64 [1797]
  inks: list           # ink colour name per image (demo_text.INK_COLORS)
  kinds: list          # file kind per image in the MMC4 folder: "jpg" | "png" | "gray_png"
  train: np.ndarray    # sorted indices allowed in training documents
  held: np.ndarray     # sorted held-out indices (evaluation only)


def load_digits(split_rng, render_rng):
  """sklearn's bundled digits (no download), rendered in ink on paper and split; a pure function of the rngs."""
  from sklearn import datasets  # pylint: disable=import-outside-toplevel  # slow import, only needed here
  digits = datasets.load_digits()
  labels = digits.target.astype(np.int64)
  train, held = demo_docs.stratified_holdout(labels, HOLDOUT_FRACTION, split_rng)
  images, inks = _render(digits.images, render_rng)
  return Digits(images, labels, inks, _file_kinds(inks, render_rng), train, held)


def _render(scans, rng):
  """8x8 scans (0..16, ink = high) -> RGB uint8 [N, 32, 32, 3] in a drawn ink on off-white paper; ink names [N]."""
  names = list(INK_P)
  inks = rng.choice(len(names), size=len(scans), p=list(INK_P.values()))
  papers = 255 - rng.integers(0, 16, size=(len(scans), 3))
  out = np.empty((len(scans), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  for i, scan in enumerate(scans):
    small = Image.fromarray(np.round(scan * (255 / 16)).astype(np.uint8), "L")
    # Bicubic upscaling turns the 16-level blocks into smooth strokes, closer to a real scan than 4x4 squares.
    alpha = np.asarray(small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC), np.float64)[..., None] / 255
    ink = np.asarray(demo_text.INK_COLORS[names[inks[i]]], np.float64)
    out[i] = np.round(papers[i] * (1 - alpha) + ink * alpha).astype(np.uint8)
  return out, [names[k] for k in inks]


def _file_kinds(inks, rng):
  kinds = []
  for ink in inks:
    if ink == "black" and rng.random() < GRAY_PNG_P:  # only black ink: a grey file must not contradict the text
      kinds.append("gray_png")
    else:
      kinds.append("png" if rng.random() < RGB_PNG_P else "jpg")
  return kinds


def encode(rgb, kind="jpg"):
  """uint8 [H, W, 3] -> file bytes of `kind` ("jpg", "png", "gray_png")."""
  buf = io.BytesIO()
  image = Image.fromarray(rgb, "RGB")
  if kind == "gray_png":
    image.convert("L").save(buf, format="PNG")
  elif kind == "png":
    image.save(buf, format="PNG")
  else:
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
  return buf.getvalue()


def _zip_one(path, member, data):
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
    info = zipfile.ZipInfo(member, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    z.writestr(info, data)


def _tar_add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size, info.mtime, info.mode = len(data), 0, 0o644
  info.uid = info.gid = 0
  info.uname = info.gname = ""
  tar.addfile(info, io.BytesIO(data))


def write_mmc4(shard_dir, image_dir, docs, digits, rng):
  """MMC4 shards `docs_shard_{i}_v2.jsonl[.zip]` + one image file per link, named by the SHA-1 of its URL.

  Returns dict(missing_image_files, broken_json_lines).
  """
  os.makedirs(shard_dir)
  os.makedirs(image_dir)
  missing, lines = 0, []
  for d, doc in enumerate(docs):
    infos = []
    for slot, image in enumerate(doc.images):
      kind = digits.kinds[image.index]
      ext = "png" if kind.endswith("png") else "jpg"
      raw_url = f"https://img.digits.demo.invalid/{d:05d}/{slot}.{ext}"
      name = hashlib.sha1(raw_url.encode()).hexdigest() + "." + ext
      if rng.random() < MISSING_IMAGE_P:
        missing += 1
      else:
        with open(os.path.join(image_dir, name), "wb") as f:
          f.write(encode(digits.images[image.index], kind))
      infos.append({"image_name": name, "raw_url": raw_url, "matched_text_index": image.matched,
                    "matched_sim": image.sim})
    record = {"url": doc.url, "text_list": doc.sentences, "image_info": infos,
              "similarity_matrix": [image.sim_row for image in doc.images], "could_have_url_duplicate": 0}
    lines.append(json.dumps(record, ensure_ascii=False))
  bounds = np.linspace(0, len(lines), MMC4_SHARDS + 1).astype(int)
  broken = 0
  for s in range(MMC4_SHARDS):
    shard = lines[bounds[s]:bounds[s + 1]]
    name = f"docs_shard_{s}_v2.jsonl"
    if s == 1:  # a line cut off mid-write, as interrupted crawls leave them
      shard.insert(len(shard) // 2, shard[0][:len(shard[0]) // 3])
      broken += 1
      with open(os.path.join(shard_dir, name), "wb") as f:
        f.write(("\n".join(shard) + "\n").encode("utf-8"))
    else:
      _zip_one(os.path.join(shard_dir, name + ".zip"), name, ("\n".join(shard) + "\n").encode("utf-8"))
  return dict(missing_image_files=missing, broken_json_lines=broken)


def write_laion(out, pairs, digits):
  """img2dataset-style shards: `NNNNN.tar` (KEY.jpg / KEY.txt / KEY.json), `NNNNN.parquet`, `NNNNN_stats.json`.

  Returns dict(samples_without_image, samples_without_caption).
  """
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  os.makedirs(out)
  for s in range(-(-len(pairs) // LAION_SHARD_SIZE)):
    rows = []
    with tarfile.open(os.path.join(out, f"{s:05d}.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
      for k, (index, caption, sim) in enumerate(pairs[s * LAION_SHARD_SIZE:(s + 1) * LAION_SHARD_SIZE]):
        key = f"{s:05d}{k:04d}"
        meta = {"url": f"https://img.digits.demo.invalid/laion/{key}.jpg", "key": key, "status": "success",
                "error_message": None, "width": IMAGE_SIZE, "height": IMAGE_SIZE, "original_width": 8,
                "original_height": 8, "caption": caption, "similarity": sim}
        if (s, k) not in LAION_NO_IMAGE:
          _tar_add(tar, key + ".jpg", encode(digits.images[index]))
        if (s, k) not in LAION_NO_CAPTION:
          _tar_add(tar, key + ".txt", caption.encode("utf-8"))
        else:
          meta["caption"] = None  # img2dataset writes null when the page had no alt text
        _tar_add(tar, key + ".json", json.dumps(meta).encode("utf-8"))
        rows.append(meta)
    table = pa.table({f: [r[f] for r in rows] for f in ("url", "key", "status", "caption", "similarity",
                                                         "width", "height")})
    pq.write_table(table, os.path.join(out, f"{s:05d}.parquet"))
    with open(os.path.join(out, f"{s:05d}_stats.json"), "w") as f:
      json.dump({"count": len(rows), "successes": len(rows), "failed_to_download": 0, "failed_to_resize": 0},
                f, indent=2)
  return dict(samples_without_image=len(LAION_NO_IMAGE), samples_without_caption=len(LAION_NO_CAPTION))


def save_npz(path, **arrays):
  """np.savez with fixed member dates, so equal arrays give equal bytes (np.savez stamps the current time)."""
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
    for name, value in arrays.items():
      buf = io.BytesIO()
      np.lib.format.write_array(buf, np.asarray(value), allow_pickle=False)
      info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
      info.external_attr = 0o644 << 16
      z.writestr(info, buf.getvalue())


def write_eval(path, digits):
  """The held-out split as .npz (fields in data_pipelines/demo/__init__.py). Images take the training images' path (JPEG,
  then the readers' validation and re-encoding, then TF decoding), so evaluation sees what training saw."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from data_pipelines.images import validate_image  # pylint: disable=import-outside-toplevel
  images = []
  for i in digits.held:
    data, reason = validate_image(encode(digits.images[i]))
    if reason is not None:
      raise RuntimeError(f"held-out digit {i} failed validation: {reason}")
    images.append(tf.io.decode_image(data, channels=3).numpy())
  os.makedirs(os.path.dirname(path), exist_ok=True)
  save_npz(
      path, images=np.stack(images), labels=digits.labels[digits.held].astype(np.int32),
      captions=np.array([demo_text.eval_caption(int(digits.labels[i]), digits.inks[i]) for i in digits.held]),
      class_names=np.array(demo_text.NAMES), templates=np.array(demo_text.EVAL_TEMPLATES),
      digit_index=digits.held.astype(np.int32), ink=np.array([digits.inks[i] for i in digits.held]))
