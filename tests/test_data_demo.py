"""The bundled demo corpus: deterministic, held-out digits never in training documents, real readers, usable rows.

The corpus is built twice per session (two tmp folders, ~5 s each) and shared by every test here.
"""
import hashlib
import io
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image
import tensorflow as tf

from data_pipelines import build
from data_pipelines import demo
from data_pipelines.demo import docs as demo_docs
from data_pipelines.demo import text as demo_text
from data_pipelines import rows
from data_pipelines.tokenizer import Tokenizer
from configs import common

SOURCES = ("mmc4", "laion")


@pytest.fixture(scope="session")
def corpora(tmp_path_factory):
  """Two independent builds of the corpus (for determinism); most tests use the first."""
  return [demo.ensure_demo(str(tmp_path_factory.mktemp(f"demo_{k}"))) for k in range(2)]


@pytest.fixture(scope="session")
def corpus(corpora):
  return corpora[0]


@pytest.fixture(scope="session")
def documents(corpus):
  """source -> list of documents as TFDS returns them (numpy values)."""
  return {s: list(build.load_documents(s, corpus.data_dir).as_numpy_iterator()) for s in SOURCES}


@pytest.fixture(scope="session")
def digits():
  return demo.load_digits()


@pytest.fixture(scope="session")
def matched(documents, digits):
  """Every stored image decoded, with its nearest rendered digit: source -> per document (nearest, rms, pixels)."""
  out = {}
  for source in SOURCES:
    per_doc = [[np.asarray(Image.open(io.BytesIO(im)).convert("RGB")) for im in d["images"]]
               for d in documents[source]]
    flat = np.stack([im for doc in per_doc for im in doc])
    nearest, rms = _nearest(flat, digits.images)
    bounds = np.cumsum([0] + [len(doc) for doc in per_doc])
    out[source] = [(nearest[a:b], rms[a:b], flat[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
  return out


def _decode(data):
  return tf.io.decode_image(data, channels=3).numpy()


def _nearest(images, references):
  """-> (index of the nearest reference, RMS pixel distance to it) per image; float32 [N, 3072] matmul."""
  a = images.reshape(len(images), -1).astype(np.float32)
  b = references.reshape(len(references), -1).astype(np.float32)
  d2 = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
  nearest = d2.argmin(1)
  return nearest, np.sqrt(np.maximum(d2[np.arange(len(a)), nearest], 0) / a.shape[1])


def _file_hashes(root):
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _plain(document):
  return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in document.items()}


def test_two_builds_are_identical(corpora):
  a, b = corpora
  for sub in ("raw", "tokenizer", "eval"):
    hashes = _file_hashes(os.path.join(a.root, sub))
    assert hashes and hashes == _file_hashes(os.path.join(b.root, sub)), sub
  for source in SOURCES:
    docs_a = [_plain(d) for d in build.load_documents(source, a.data_dir).as_numpy_iterator()]
    docs_b = [_plain(d) for d in build.load_documents(source, b.data_dir).as_numpy_iterator()]
    assert docs_a and docs_a == docs_b, source
  strip = lambda r: {k: v for k, v in r.items() if k not in ("build_seconds", "data_dir", "input_dir", "images_dir")}
  assert {s: strip(r) for s, r in a.reports.items()} == {s: strip(r) for s, r in b.reports.items()}


def test_held_out_images_never_appear_in_training_documents(matched, digits, corpus):
  assert len(np.intersect1d(digits.train, digits.held)) == 0
  assert len(digits.train) + len(digits.held) == 1797
  # Each class is held out in proportion (stratified).
  held_per_class = np.bincount(digits.labels[digits.held], minlength=10)
  assert np.all(np.abs(held_per_class - 0.2 * np.bincount(digits.labels)) <= 1)
  # Every image of every stored training document, decoded, is nearest to a TRAINING digit's pixels, and close to
  # it (JPEG noise only): none of them is a held-out digit.
  nearest = np.concatenate([n for s in SOURCES for n, _, _ in matched[s]])
  noise = np.concatenate([r for s in SOURCES for _, r, _ in matched[s]])
  images = np.concatenate([p for s in SOURCES for _, _, p in matched[s]])
  assert np.isin(nearest, digits.train).all()
  assert noise.max() < 8, noise.max()
  # And directly: every held-out evaluation image is farther from every training image than JPEG noise reaches.
  with np.load(corpus.eval_path) as ev:
    eval_images, digit_index = ev["images"], ev["digit_index"]
  np.testing.assert_array_equal(digit_index, digits.held)
  _, to_training = _nearest(eval_images, images)
  assert to_training.min() > 1.5 * noise.max(), (to_training.min(), noise.max())


def test_eval_split_has_images_labels_and_captions(corpus, digits):
  with np.load(corpus.eval_path) as ev:
    assert ev["images"].shape == (len(digits.held), 32, 32, 3) and ev["images"].dtype == np.uint8
    np.testing.assert_array_equal(ev["labels"], digits.labels[digits.held])
    assert list(ev["class_names"]) == list(demo_text.NAMES)
    assert all("{}" in t for t in ev["templates"])
    for label, ink, caption in zip(ev["labels"], ev["ink"], ev["captions"]):
      assert caption == demo_text.eval_caption(int(label), str(ink))
    nearest, distance = _nearest(ev["images"], digits.images)
    np.testing.assert_array_equal(nearest, digits.held)
    assert distance.max() < 6


def test_raw_files_are_real_mmc4_and_laion_shards(corpus):
  names = sorted(os.listdir(corpus.mmc4_dir))
  assert names == ["docs_shard_0_v2.jsonl.zip", "docs_shard_1_v2.jsonl", "docs_shard_2_v2.jsonl.zip"]
  with zipfile.ZipFile(os.path.join(corpus.mmc4_dir, names[0])) as z:
    assert z.namelist() == ["docs_shard_0_v2.jsonl"]
    records = [json.loads(line) for line in z.read("docs_shard_0_v2.jsonl").decode().splitlines()]
  sims = [info["matched_sim"] for r in records for info in r["image_info"]]
  assert 0.15 < np.mean(np.array(sims) >= 0.24) < 0.95  # around the threshold on both sides
  for r in records:
    assert set(r) >= {"url", "text_list", "image_info", "similarity_matrix"}
    assert len(r["similarity_matrix"]) == len(r["image_info"])
    for info, row in zip(r["image_info"], r["similarity_matrix"]):
      assert len(row) == len(r["text_list"]) and int(np.argmax(row)) == info["matched_text_index"]
  assert len({info["matched_text_index"] for r in records for info in r["image_info"]}) > 1
  extensions = {name.rsplit(".", 1)[1] for name in os.listdir(corpus.mmc4_images_dir)}
  assert extensions == {"jpg", "png"}
  assert sorted(n for n in os.listdir(corpus.laion_dir) if n.endswith(".tar")) == ["00000.tar", "00001.tar"]


def test_corpus_went_through_the_real_readers(corpus):
  mmc4, laion, dirt = corpus.reports["mmc4"], corpus.reports["laion"], corpus.manifest["dirt_written"]
  m = corpus.manifest
  assert mmc4["documents"]["read"] == m["mmc4_documents"] + dirt["mmc4"]["broken_json_lines"]
  assert mmc4["documents"]["skipped"]["broken_json"] == dirt["mmc4"]["broken_json_lines"]
  assert mmc4["images"]["read"] == m["mmc4_image_links"]
  assert mmc4["images"]["skipped"] == {"missing_image": dirt["mmc4"]["missing_image_files"]}
  assert mmc4["images"]["kept"] == m["mmc4_image_links"] - dirt["mmc4"]["missing_image_files"]
  assert laion["documents"]["read"] == m["laion_pairs"]
  assert laion["documents"]["skipped"] == {"missing_caption": 1, "missing_image": 1}
  assert laion["documents"]["kept"] == laion["images"]["kept"] == m["laion_pairs"] - 2
  assert m["train_images"] + m["held_out_images"] == 1797 and m["training_images_used"] == m["train_images"]


def test_rows_from_demo_documents(corpus, documents):
  tokenizer = Tokenizer(corpus.tokenizer_path)
  assert tokenizer.vocab_size == common.DEMO_VOCAB_SIZE
  k, seq_len = demo.PATCHES_PER_IMAGE, common.RUNLOCAL_SEQ_LEN
  assert k == 16
  span = [tokenizer.boi_id] + [tokenizer.img_id] * k + [tokenizer.eoi_id]
  rng = np.random.default_rng(0)
  mmc4 = [rows.mmc4_row(d, rng, tokenizer, seq_len=seq_len, patches_per_image=k) for d in documents["mmc4"]]
  mmc4 = [r for r in mmc4 if r is not None]
  laion = list(rows.laion_rows(documents["laion"], rng, tokenizer, seq_len=seq_len, patches_per_image=k))
  assert len(mmc4) > 0.9 * len(documents["mmc4"])
  assert sum(len(r.images) for r in laion) == len(documents["laion"])
  for row in mmc4 + laion:
    tokens = row.tokens.tolist()
    starts = [i for i, t in enumerate(tokens) if t == tokenizer.boi_id]
    assert len(starts) == len(row.images) and tokens.count(tokenizer.img_id) == k * len(starts)
    assert all(tokens[i:i + k + 2] == span for i in starts)
    for image in row.images[:1]:
      assert _decode(image).shape == (32, 32, 3)
  assert max(len(r.images) for r in mmc4) <= 6 and sum(len(r.images) for r in mmc4) > 2 * len(mmc4)


def test_sentences_relate_to_their_images(documents, matched, digits):
  """A kept MMC4 image's matched sentence names its digit (the text/image link the model is meant to learn)."""
  hits, total = 0, 0
  for d, (nearest, _, _) in zip(documents["mmc4"], matched["mmc4"]):
    for label, j, sim in zip(digits.labels[nearest], d["image_text_index"], d["image_sim"]):
      if sim >= 0.24:
        text = d["texts"][j].decode()
        total += 1
        hits += demo_text.NAMES[label] in text or demo_text.PLURALS[label] in text or f" {label}" in text
  assert total > 900 and hits > 0.75 * total, (hits, total)


def test_ensure_demo_reuses_the_cache(corpus):
  stamp = os.path.getmtime(os.path.join(corpus.root, "manifest.json"))
  again = demo.ensure_demo(os.path.dirname(corpus.root))
  assert again == corpus
  # Reused, not rebuilt: the manifest (written last by a build) is untouched.
  assert os.path.getmtime(os.path.join(corpus.root, "manifest.json")) == stamp


def test_failed_build_leaves_no_partial_corpus(tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise KeyboardInterrupt("interrupted mid-build")

  monkeypatch.setattr(demo_docs, "laion_pair", fail)
  with pytest.raises(KeyboardInterrupt):
    demo.ensure_demo(str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_losing_a_build_race_uses_the_winners_corpus(tmp_path, monkeypatch, corpus):
  def generate_while_another_process_finishes(tmp):
    shutil.copytree(corpus.root, tmp_path / demo.VERSION)  # the other process renames its build into place first
    shutil.copytree(corpus.root, tmp, dirs_exist_ok=True)

  monkeypatch.setattr(demo, "_generate", generate_while_another_process_finishes)
  paths = demo.ensure_demo(str(tmp_path))
  assert paths.root == str(tmp_path / demo.VERSION) and paths.manifest == corpus.manifest
  assert os.listdir(tmp_path) == [demo.VERSION]  # our temporary build is gone


def test_cache_dir_defaults_to_env(monkeypatch, tmp_path):
  monkeypatch.setenv("LCL_DEMO_DIR", str(tmp_path))
  assert demo.default_cache_dir() == str(tmp_path)
  monkeypatch.delenv("LCL_DEMO_DIR")
  assert demo.default_cache_dir().endswith(os.path.join(".cache", "lcl_jax"))
