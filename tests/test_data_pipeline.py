"""data_pipelines.pipeline: the batch contract, per-host shares, the mixture, exact resume, bad input, inspect, bench.

Most tests read small generated corpora (tests/pipeline_corpus.py: every image unique, recognisable by its pixels)
built through the real TFDS builders as ArrayRecord; the CLIs read the bundled demo corpus (TFRecord, in memory).
"""
import collections
import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from configs import vitb16_mmc4, vitl14_laion_mmc4
from configs.common import SPECIAL_TOKENS
from data_pipelines import augment, build, chunking, demo, pipeline, row_stream, sampling
from data_pipelines.errors import DataSetupError
from pipeline_corpus import (BAD_IMAGES, CONVERTIBLE_IMAGES, dirty_mmc4_docs, laion_docs, mmc4_docs, obelics_docs,
                             pixel_hash, png_hash, write_source)
from test_data_readers import make_laion, make_mmc4, make_obelics

BOI = SPECIAL_TOKENS["boi"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def demo_paths():
  """The demo corpus in the shared cache (built once per machine; the CLIs' "demo" resolves to the same one)."""
  return demo.ensure_demo()


@pytest.fixture(scope="session")
def generated(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("generated")
  docs = dict(lcl_laion=laion_docs(60), lcl_mmc4=mmc4_docs(30), lcl_obelics=obelics_docs(16))
  for name, source_docs in docs.items():
    write_source(data_dir, name[len("lcl_"):], source_docs)
  return str(data_dir), docs


def make_config(data_dir, tokenizer, sources, **data):
  config = vitb16_mmc4.get_config("runlocal")
  config.model.vit.image_size, config.model.vit.patch_size = 16, 8  # K = 4 patches: spans of 6 tokens
  config.data.sources = sources
  config.data.data_dir, config.data.tokenizer = data_dir, tokenizer
  config.data.update(dict(dict(seq_len=96, rows_per_batch=8, images_per_batch=32, block_docs=8, decode_threads=2),
                          **data))
  return config


def row_images(batch, num_chunks):
  """Checks the contract of every chunk and returns each row's images: within a chunk the j-th span in row-major
  order owns slot j, valid slots come first, unused slots are zero, unused rows are all padding."""
  rows_per_chunk = len(batch["tokens"]) // num_chunks
  slots_per_chunk = len(batch["images"]) // num_chunks
  out = []
  for c in range(num_chunks):
    slot = c * slots_per_chunk
    for r in range(c * rows_per_chunk, (c + 1) * rows_per_chunk):
      n = int((batch["tokens"][r] == BOI).sum())
      out.append(batch["images"][slot:slot + n])
      slot += n
    assert slot <= (c + 1) * slots_per_chunk, "image budget exceeded"
    valid = batch["image_valid"][c * slots_per_chunk:(c + 1) * slots_per_chunk]
    assert valid.tolist() == [True] * (slot - c * slots_per_chunk) + [False] * ((c + 1) * slots_per_chunk - slot)
    assert not batch["images"][slot:(c + 1) * slots_per_chunk].any()
  for r in range(len(batch["tokens"])):
    if not batch["segment_ids"][r].any():
      assert not batch["tokens"][r].any() and not batch["positions"][r].any()
  return out


def epoch_zero(data, names, on_row, on_batch=lambda batch, metrics: None, limit=300):
  """Iterates batches until every named source has rolled into epoch 1; calls on_row(info, images) for each row of
  epoch 0 and on_batch(batch, metrics) for each batch. Returns the last metrics."""
  for _ in range(limit):
    batch, metrics, info = data.next_with_info()
    on_batch(batch, metrics)
    for row_info, images in zip(info, row_images(batch, data.local_chunks)):
      if row_info is not None and row_info["epoch"] == 0:
        on_row(row_info, images)
    if all(metrics[f"epoch/{name}"] >= 1 for name in names):
      return metrics
  raise AssertionError("no epoch end")


# ----------------------------------------------------------------------------------------------------------------
# Pure pieces: permutation, mixture draw, packing.


def test_permutation_is_a_seeded_bijection():
  for n in (1, 2, 7, 64, 1000, 4099):
    order = sampling.Permutation(n, 0, "lcl_laion", 3)(np.arange(n))
    assert sorted(order.tolist()) == list(range(n))
    assert np.array_equal(order, sampling.Permutation(n, 0, "lcl_laion", 3)(np.arange(n)))
  assert not np.array_equal(sampling.Permutation(100, 0, "x", 0)(np.arange(100)),
                            sampling.Permutation(100, 0, "x", 1)(np.arange(100)))
  draws = [sampling.choose([1, 3], sampling.uniform(0, "m", i)) for i in range(20000)]
  assert np.mean(draws) == pytest.approx(0.75, abs=0.015)


class Item:
  def __init__(self, ident, n, seq_len=40, k=2):
    tokens = np.full(seq_len, 9, np.int32)
    for j in range(n):
      tokens[1 + j * (k + 3)] = BOI
    self.ident, self.tokens = ident, tokens
    self.segment_ids, self.positions = np.ones(seq_len, np.int32), np.arange(seq_len, dtype=np.int32)
    self.images = np.stack([np.full((4, 4, 3), 10 * ident + j, np.uint8) for j in range(n)]) if n else (
        np.zeros((0, 4, 4, 3), np.uint8))


def test_pack_fills_chunks_in_order_and_carries_the_overflowing_row():
  rng = np.random.default_rng(0)
  items = [Item(i, int(rng.integers(0, 6))) for i in range(25)]
  rows_per_chunk, images_per_chunk, num_chunks = 3, 6, 2
  placed = []
  for chunks, carried in chunking.pack(items, num_chunks=num_chunks, rows_per_chunk=rows_per_chunk,
                                       images_per_chunk=images_per_chunk):
    for c, chunk in enumerate(chunks):
      used = sum(len(i.images) for i in chunk)
      assert len(chunk) <= rows_per_chunk and used <= images_per_chunk
      following = (chunks[c + 1][0] if c + 1 < len(chunks) and chunks[c + 1] else carried)
      if following is not None and len(chunk) < rows_per_chunk:  # closed only because the next row overflowed
        assert used + len(following.images) > images_per_chunk
      placed += chunk
    batch = chunking.assemble(chunks, rows_per_chunk=rows_per_chunk, images_per_chunk=images_per_chunk,
                              seq_len=40, image_size=4)
    flat = [i for chunk in chunks for i in chunk + [None] * (rows_per_chunk - len(chunk))]
    for item, images in zip(flat, row_images(batch, num_chunks)):
      expected = [] if item is None else [10 * item.ident + j for j in range(len(item.images))]
      assert [int(im[0, 0, 0]) for im in images] == expected  # j-th span <-> j-th slot
  assert [i.ident for i in placed] == list(range(25))  # nothing dropped, nothing reordered


# ----------------------------------------------------------------------------------------------------------------
# The pipeline on generated corpora.


def test_batches_keep_the_contract_and_use_every_image_once_per_epoch(generated, demo_paths):
  data_dir, docs = generated
  names = ["lcl_laion", "lcl_mmc4"]
  config = make_config(data_dir, demo_paths.tokenizer_path, {n: 0.5 for n in names})
  data = pipeline.Pipeline(config, num_chunks=2, train=False)  # eval transform: the 16 px test images stay exact
  seen = {n: collections.Counter() for n in names}

  def on_row(info, images):
    seen[info["source"]].update(pixel_hash(im) for im in images)

  def on_batch(batch, metrics):
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "tokens": ((8, 96), np.int32), "segment_ids": ((8, 96), np.int32), "positions": ((8, 96), np.int32),
        "images": ((32, 16, 16, 3), np.uint8), "image_valid": ((32,), bool)}
    assert metrics["valid_images"] == batch["image_valid"].sum()
    assert metrics["rows"] == (batch["segment_ids"] > 0).any(1).sum()
    assert sum(metrics[f"tokens/{k}"] for k in ("text", "markers", "img", "pad")) == batch["tokens"].size
    assert metrics["padding_fraction/rows"] == pytest.approx(metrics["tokens/pad"] / batch["tokens"].size)
  epoch_zero(data, names, on_row, on_batch)
  data.close()
  for name in names:
    assert seen[name] == collections.Counter(png_hash(im) for d in docs[name] for im in d["images"]), name


def test_two_hosts_read_disjoint_documents_that_cover_the_epoch(generated, demo_paths):
  data_dir, docs = generated
  names = sorted(docs)
  config = make_config(data_dir, demo_paths.tokenizer_path, {n: 1.0 for n in names})
  read = []
  for host in range(2):
    ids = {n: set() for n in names}
    data = pipeline.Pipeline(config, num_chunks=2, process_index=host, process_count=2)
    assert data.local_chunks == 1
    epoch_zero(data, names, lambda info, _: ids[info["source"]].update(info["doc_ids"]))
    data.close()
    read.append(ids)
  for name in names:
    assert not read[0][name] & read[1][name], name
    assert read[0][name] | read[1][name] == {d["doc_id"] for d in docs[name]}, name


def test_mixture_weights_are_honoured(generated, demo_paths):
  data_dir, _ = generated
  config = make_config(data_dir, demo_paths.tokenizer_path, {"lcl_laion": 0.2, "lcl_mmc4": 0.8})
  data = pipeline.Pipeline(config, num_chunks=2)
  counts = collections.Counter()
  for _ in range(60):
    _, metrics = next(data)
    counts.update({n: metrics[f"rows/{n}"] for n in ("lcl_laion", "lcl_mmc4")})
  data.close()
  total = sum(counts.values())
  assert total > 300
  assert counts["lcl_laion"] / total == pytest.approx(0.2, abs=4 * np.sqrt(0.16 / total))


def test_resume_gives_the_same_batches_as_an_uninterrupted_run(generated, demo_paths):
  data_dir, docs = generated
  config = make_config(data_dir, demo_paths.tokenizer_path, {n: 1.0 for n in docs}, block_docs=3)
  hosts = [pipeline.Pipeline(config, num_chunks=4, process_index=h, process_count=2) for h in range(2)]
  for _ in range(7):
    for data in hosts:
      next(data)
  saved = [data.get_state() for data in hosts]
  assert all(isinstance(v, int) for s in saved for v in s.values()) and len(saved[0]) < 60
  straight = [[next(data) for _ in range(6)] for data in hosts]
  for data in hosts:
    data.close()
  for h in range(2):
    resumed = pipeline.Pipeline(config, num_chunks=4, process_index=h, process_count=2)
    resumed.set_state(saved)
    assert resumed.get_state() == saved[h]
    for batch, metrics in straight[h]:
      again, again_metrics = next(resumed)
      assert all(np.array_equal(batch[k], again[k]) for k in batch)
      assert again_metrics == metrics
    resumed.close()


def test_resume_on_fewer_hosts_skips_no_document(generated, demo_paths):
  data_dir, docs = generated
  config = make_config(data_dir, demo_paths.tokenizer_path, {"lcl_laion": 1.0}, block_docs=4)
  seen, saved = set(), []
  for h in range(2):
    data = pipeline.Pipeline(config, num_chunks=2, process_index=h, process_count=2)
    for _ in range(2):
      _, _, info = data.next_with_info()
      seen.update(d for row in info if row for d in row["doc_ids"])
    saved.append(data.get_state())
    data.close()
  data = pipeline.Pipeline(config, num_chunks=2)
  data.set_state(saved)
  assert data.get_state()["lcl_laion/epoch"] == 0 and data.get_state()["lcl_laion/base"] > 0
  epoch_zero(data, ["lcl_laion"], lambda info, _: seen.update(info["doc_ids"]))
  data.close()
  assert seen == {d["doc_id"] for d in docs["lcl_laion"]}


def test_rows_are_capped_at_the_image_budget(generated, demo_paths):
  data_dir, docs = generated
  names = sorted(docs)
  config = make_config(data_dir, demo_paths.tokenizer_path, {n: 1.0 for n in names}, images_per_batch=6)
  data = pipeline.Pipeline(config, num_chunks=2, train=False)  # 3 image slots per chunk
  seen = {n: collections.Counter() for n in names}

  def on_row(info, images):
    assert len(images) <= 3
    seen[info["source"]].update(pixel_hash(im) for im in images)
  metrics = epoch_zero(data, names, on_row)
  data.close()
  assert metrics.get("skipped/row_over_image_budget", 0) == 0
  # LAION and OBELICS rows are only packed tighter: every image once. MMC4 keeps the first 3 of each document.
  for name, keep in (("lcl_laion", None), ("lcl_obelics", None), ("lcl_mmc4", 3)):
    assert seen[name] == collections.Counter(png_hash(im) for d in docs[name] for im in d["images"][:keep]), name


def test_rows_over_the_image_budget_are_dropped_and_counted(generated, demo_paths, monkeypatch):
  # Rows are built within the budget, so the drop is a safety net: exercise it with rows built without the cap.
  uncapped = row_stream.row_builder
  monkeypatch.setattr(row_stream, "row_builder", lambda *args, max_images=None, **kwargs: uncapped(*args, **kwargs))
  data_dir, docs = generated
  config = make_config(data_dir, demo_paths.tokenizer_path, {"lcl_mmc4": 1.0}, images_per_batch=6)
  data = pipeline.Pipeline(config, num_chunks=2)  # 3 image slots per chunk
  used = set()
  metrics = epoch_zero(data, ["lcl_mmc4"], lambda info, _: used.update(info["doc_ids"]))
  data.close()
  assert used == {d["doc_id"] for d in docs["lcl_mmc4"] if len(d["images"]) <= 3}
  assert metrics["skipped/row_over_image_budget"] >= len(docs["lcl_mmc4"]) - len(used)


def test_runlocal_on_eight_chunks_feeds_laion_rows(demo_paths):
  # 32 image slots over 8 chunks: 4 per chunk, while an uncapped 256-token LAION row holds ~8 pairs.
  config = vitl14_laion_mmc4.get_config("runlocal")
  config.data.update(dict(data_dir=demo_paths.data_dir, tokenizer=demo_paths.tokenizer_path, decode_threads=2))
  data = pipeline.Pipeline(config, num_chunks=8)
  assert data.images_per_chunk == 4 and pipeline.max_images_per_row("laion", data.seq_len, data.patches) > 4
  laion_rows = 0
  for _ in range(6):
    batch, metrics = next(data)
    laion_rows += metrics["rows/lcl_laion"]
    row_images(batch, 8)
    assert metrics.get("skipped/row_over_image_budget", 0) == 0
  data.close()
  assert laion_rows > 0


def test_bad_inputs_are_skipped_and_counted(tmp_path, demo_paths):
  # Dirty raw downloads of the three formats, built as ArrayRecord: the build skips, the pipeline reports and runs.
  data_dir = tmp_path / "tfds"
  for folder in "mlo":
    (tmp_path / folder).mkdir()
  reports = {"mmc4": build.build("mmc4", str(make_mmc4(tmp_path / "m")), str(data_dir), file_format="array_record"),
             "laion": build.build("laion", str(make_laion(tmp_path / "l")), str(data_dir),
                                  file_format="array_record")}
  raw, images, _, _ = make_obelics(tmp_path / "o", "sha1")
  reports["obelics"] = build.build("obelics", str(raw), str(data_dir), images_dir=str(images), mapping="sha1",
                                   file_format="array_record")
  assert len(list(build.load_documents("mmc4", str(data_dir)))) == reports["mmc4"]["documents"]["kept"]
  with pytest.raises(ValueError, match="holds array_record files"):  # not silently reused as another format
    build.build("mmc4", str(tmp_path / "m" / "raw"), str(data_dir))
  names = [f"lcl_{s}" for s in reports]
  config = make_config(str(data_dir), demo_paths.tokenizer_path, {n: 1.0 for n in names}, block_docs=2)
  data = pipeline.Pipeline(config, num_chunks=1)
  metrics = epoch_zero(data, names, lambda info, images: None)
  data.close()
  for source, report in reports.items():
    for reason, n in {**report["documents"]["skipped"], **report["images"]["skipped"]}.items():
      assert metrics[f"skipped/build/lcl_{source}/{reason}"] >= n
  assert metrics["skipped/build/lcl_mmc4/unsafe_path"] == 2

  # Documents whose stored bytes are broken (corrupted storage): the row or document is dropped and counted by
  # reason; images in other modes are converted and kept.
  write_source(tmp_path / "dirty", "mmc4", dirty_mmc4_docs(good=12))
  config = make_config(str(tmp_path / "dirty"), demo_paths.tokenizer_path, {"lcl_mmc4": 1.0})
  data = pipeline.Pipeline(config, num_chunks=1)
  used = set()
  metrics = epoch_zero(data, ["lcl_mmc4"], lambda info, _: used.update(info["doc_ids"]))
  data.close()
  assert {reason for reason in BAD_IMAGES if metrics.get(f"skipped/image/{reason}", 0) >= 1} == set(BAD_IMAGES)
  assert metrics["skipped/lcl_mmc4/invalid_utf8"] >= 1
  assert used == {f"mmc4:{i}" for i in range(12)} | {f"dirty:{name}" for name in CONVERTIBLE_IMAGES}


def test_start_up_errors_name_what_to_fix(tmp_path, generated, demo_paths):
  data_dir, _ = generated
  with pytest.raises(DataSetupError, match=r"config\.data\.data_dir.*\n.*python -m data_pipelines\.build"):
    pipeline.Pipeline(make_config(str(tmp_path), demo_paths.tokenizer_path, {"lcl_mmc4": 1.0}), num_chunks=1)
  config = make_config(data_dir, demo_paths.tokenizer_path, {"lcl_mmc4": 1.0})
  config.model.decoder.vocab_size = 1000
  with pytest.raises(ValueError, match=r"config\.model\.decoder\.vocab_size=1000.*512"):
    pipeline.Pipeline(config, num_chunks=1)
  with pytest.raises(ValueError, match=r"config\.data\.rows_per_batch"):
    pipeline.Pipeline(make_config(data_dir, demo_paths.tokenizer_path, {"lcl_mmc4": 1.0}), num_chunks=16)
  with pytest.raises(ValueError, match="lcl_nope"):
    pipeline.Pipeline(make_config(data_dir, demo_paths.tokenizer_path, {"lcl_nope": 1.0}), num_chunks=1)


# ----------------------------------------------------------------------------------------------------------------
# Transforms.


def _photo(width, height, seed=0):
  rng = np.random.default_rng(seed)
  base = np.linspace(0, 255, width)[None, :, None] * np.linspace(0.3, 1, height)[:, None, None]
  pixels = np.clip(base + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="JPEG", quality=92)
  return out.getvalue(), pixels


def test_train_transform_is_openclip_random_resized_crop_and_reproducible():
  rng = np.random.default_rng(0)
  for _ in range(500):
    left, top, right, bottom = augment.random_resized_crop(400, 300, rng)
    w, h = right - left, bottom - top
    assert 0 <= left and right <= 400 and 0 <= top and bottom <= 300
    assert 0.9 * 0.98 <= w * h / 120000 <= 1.0 and 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
  data, _ = _photo(400, 300)
  first = augment.load(data, 64, sampling.generator("augment", 1))
  assert first.shape == (64, 64, 3) and first.dtype == np.uint8
  assert np.array_equal(first, augment.load(data, 64, sampling.generator("augment", 1)))
  assert not np.array_equal(first, augment.load(data, 64, sampling.generator("augment", 2)))


def test_eval_transform_is_resize_short_side_then_centre_crop():
  data, pixels = _photo(300, 200)
  reference = Image.fromarray(pixels).resize((96, 64), Image.Resampling.BICUBIC).crop((16, 0, 80, 64))
  out = augment.load(data, 64, None).astype(int)
  assert np.abs(out - np.asarray(reference, int)).mean() < 4  # JPEG round trip and sub-pixel placement


def test_draft_decoding_of_large_jpegs_matches_a_full_decode():
  data, _ = _photo(1600, 1200)
  full = Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.Resampling.BICUBIC,
                                                              box=augment.centre_crop(1600, 1200))
  assert np.abs(augment.load(data, 64, None).astype(int) - np.asarray(full, int)).mean() < 3


# ----------------------------------------------------------------------------------------------------------------
# The command lines, on the demo corpus (both at once: each pays the tensorflow import).


def test_inspect_writes_a_png_and_bench_prints_json(tmp_path, demo_paths):
  del demo_paths  # built: the subprocesses find it in the same cache
  png = tmp_path / "row.png"
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  inspect = subprocess.Popen(
      [sys.executable, "-m", "tools.inspect_batches", "--config=configs/vitl14_laion_mmc4.py:runlocal",
       "--num_batches=2", f"--output={png}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  bench = subprocess.Popen(
      [sys.executable, "-m", "tools.data_bench", "--config=configs/vitb16_mmc4.py:runlocal", "--seconds=1",
       "--config.data.seq_len=384"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  out, err = inspect.communicate(timeout=300)
  assert inspect.returncode == 0, err.decode()[-3000:]
  assert "padding_fraction/rows" in out.decode()
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(png).size[0] > 200
  out, err = bench.communicate(timeout=300)
  assert bench.returncode == 0, err.decode()[-3000:]
  result = json.loads(out.decode())
  assert result["seq_len"] == 384 and result["image_size"] == 32
  for key in ("documents_per_s", "rows_per_s", "images_per_s"):
    assert result[key]["total"] > 0 and result[key]["per_core"] > 0
