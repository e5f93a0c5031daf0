"""Readers of the raw formats (data_pipelines/readers) and bad-input bookkeeping (data_pipelines/bad_input.py).

Every bad-input kind of docs/formats.md on generated files: each is skipped and counted, the good content around it is
kept, and nothing outside the data root is ever opened.
"""
import hashlib
import json
import threading
import zipfile

from absl import logging
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from data_pipelines import bad_input
from data_pipelines.bad_input import BadInputCounter, safe_join, safe_relpath
from data_pipelines.readers import laion, listing, mmc4, obelics, read_documents, read_texts, shard_files
from data_pipelines.readers import image_store
from data_pipelines.readers.schema import FIELDS, PLACEMENT_FIXED, PLACEMENT_RANDOM
from raw_data import (decode, image_bytes, mmc4_doc, obelics_row, patterned_png, write_jsonl, write_parquet,
                      write_tar)


# ----------------------------------------------------------------------------------------------------------------
# bad_input
# ----------------------------------------------------------------------------------------------------------------
def test_counter_counts_logs_first_only_and_merges(monkeypatch):
  logged = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: logged.append(msg % args))
  a = BadInputCounter()
  a.skip("missing_image", "images/x.jpg", unit=bad_input.IMAGE)
  a.skip("missing_image", "images/y.jpg", unit=bad_input.IMAGE)
  a.skip("broken_json", "shard:3")
  a.skip("in_dropped_document", "doc", unit=bad_input.IMAGE, n=5)
  assert a.counts() == {"broken_json": 1, "in_dropped_document": 5, "missing_image": 2}
  assert a.counts_by_unit() == {"document": {"broken_json": 1},
                                "image": {"in_dropped_document": 5, "missing_image": 2}}
  assert len(logged) == 3 and "images/x.jpg" in logged[0] and "shard:3" in logged[1]
  b = BadInputCounter()
  b.skip("missing_image", "z", unit=bad_input.IMAGE)
  b.skip("odd_member_name", "t.tar/x", unit=bad_input.MEMBER)
  a.update(b)
  assert a.counts() == {"broken_json": 1, "in_dropped_document": 5, "missing_image": 3, "odd_member_name": 1}
  assert a.total() == 10 and a.total(bad_input.IMAGE) == 8


def test_counter_thread_safe():
  counter = BadInputCounter()
  threads = [threading.Thread(target=lambda: [counter.skip("r", unit="image") for _ in range(1000)])
             for _ in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert counter.counts() == {"r": 8000}


@pytest.mark.parametrize("name", ["/etc/passwd", "../secret.png", "a/../../secret.png", "", "a\x00b", "gs://x/y",
                                  "file:///etc/passwd", "\\\\server\\share", "C:/x.png", ".", "a/..", None, 3])
def test_safe_join_refuses(name):
  assert safe_join("/data/images", name) is None
  assert safe_join("gs://bucket/images", name) is None


def test_safe_join_accepts_relative_names():
  assert safe_join("/data/images", "a.jpg") == "/data/images/a.jpg"
  assert safe_join("/data/images/", "./sub//b.jpg") == "/data/images/sub/b.jpg"
  assert safe_join("gs://bucket/images", "sub/../c.jpg") == "gs://bucket/images/c.jpg"
  assert safe_relpath("./x/y.png") == "x/y.png"


# ----------------------------------------------------------------------------------------------------------------
# MMC4
# ----------------------------------------------------------------------------------------------------------------
GOOD_A, GOOD_C, GOOD_D = patterned_png(10), patterned_png(11), patterned_png(12)


@pytest.fixture
def opened(monkeypatch):
  """Paths opened through tf.io.gfile.GFile during the test."""
  paths = []
  original = tf.io.gfile.GFile

  def recording(name, mode="r"):
    paths.append(str(name))
    return original(name, mode)
  monkeypatch.setattr(tf.io.gfile, "GFile", recording)
  return paths


def make_mmc4(root, *, image_tars=False):
  """A dirty MMC4 download under root: two shards (jsonl and jsonl.zip) and the images, plus a secret outside."""
  secret = root / "secret.png"
  secret.write_bytes(patterned_png(99))  # a real image where the escaping names point: it must never be read
  raw = root / "raw"
  shard0 = [
      mmc4_doc(["Intro sentence.", "A red square follows.", "Closing words."], [
          ("a.png", 1, 0.31),
          ("missing.jpg", 0, 0.2),
          (str(secret), 0, 0.5),            # absolute name
          ("../../secret.png", 0, 0.5),     # escapes the image folder
          ("b.jpg", 7, 0.4),                # index out of range
          ("trunc.jpg", 2, 0.3),            # truncated file
          ("cmyk.jpg", 2, 0.28),            # CMYK: converted, kept
      ]),
      b"{not json at all",
      b'{"text_list": ["caf\xe9"], "image_info": []}',                        # invalid UTF-8
      mmc4_doc([], [("a.png", 0, 0.3)]),                                      # empty document
      mmc4_doc(["Only missing images here."], [("gone1.jpg", 0, 0.3), ("gone2.jpg", 0, 0.3)]),
      b'{"text_list": ["bad \\ud800 surrogate"], "image_info": []}',          # JSON escape, not UTF-8
      b"",
      dict(text_list=["First.", "Second."], similarity_matrix=[[0.1, 0.6]],
           image_info=[dict(image_name="sub/c.png", matched_text_index=1)]),  # sim from the matrix
  ]
  write_jsonl(raw / "docs_shard_0_v2.jsonl", shard0)
  write_jsonl(raw / "docs_shard_1_v2.jsonl.zip", [mmc4_doc(["Zipped doc."], [("d.png", 0, 0.9)])], zipped=True)
  (raw / "notes.txt").write_text("not a shard")
  files = {"a.png": GOOD_A, "trunc.jpg": image_bytes("JPEG", size=(64, 64))[:300],
           "cmyk.jpg": image_bytes("JPEG", size=(16, 16), color=(0, 255, 255, 0), mode="CMYK"),
           "sub/c.png": GOOD_C, "d.png": GOOD_D}
  if image_tars:
    write_tar(raw / "images" / "part-00000.tar", [("./a.png", files["a.png"]), ("sub/c.png", files["sub/c.png"])])
    write_tar(raw / "images" / "part-00001.tar", [(n, files[n]) for n in ("trunc.jpg", "cmyk.jpg", "d.png")])
  else:
    for name, data in files.items():
      (raw / "images" / name).parent.mkdir(parents=True, exist_ok=True)
      (raw / "images" / name).write_bytes(data)
  return raw


MMC4_SKIPS = {
    "document": {"broken_json": 1, "empty_document": 1, "invalid_utf8": 2, "no_usable_image": 1},
    "image": {"bad_text_index": 1, "missing_image": 3, "truncated_image": 1, "unsafe_path": 2},
}


def check_mmc4_documents(docs):
  assert [d["doc_id"] for d in docs] == ["docs_shard_0_v2.jsonl:0", "docs_shard_0_v2.jsonl:7",
                                         "docs_shard_1_v2.jsonl.zip:0"]
  first, second, zipped = docs
  assert all(set(d) == set(FIELDS) and d["source"] == "mmc4" and d["placement"] == PLACEMENT_RANDOM for d in docs)
  assert first["texts"] == ["Intro sentence.", "A red square follows.", "Closing words."]
  assert first["image_text_index"] == [1, 2] and first["image_sim"] == pytest.approx([0.31, 0.28])
  np.testing.assert_array_equal(decode(first["images"][0]), decode(GOOD_A))
  assert decode(first["images"][1])[0, 0, 0] > 200  # CMYK red stayed red
  assert second["image_text_index"] == [1] and second["image_sim"] == pytest.approx([0.6])
  np.testing.assert_array_equal(decode(second["images"][0]), decode(GOOD_C))
  assert zipped["texts"] == ["Zipped doc."]
  np.testing.assert_array_equal(decode(zipped["images"][0]), decode(GOOD_D))


@pytest.mark.parametrize("image_tars", [False, True], ids=["folder", "tars"])
def test_mmc4_dirt_skipped_counted_rest_kept(tmp_path, opened, image_tars):
  raw = make_mmc4(tmp_path, image_tars=image_tars)
  counter = BadInputCounter()
  docs = list(read_documents("mmc4", str(raw), counter))
  check_mmc4_documents(docs)
  assert counter.counts_by_unit() == MMC4_SKIPS
  assert opened and not [p for p in opened if "secret" in p]  # the escaping names were never opened


def test_mmc4_workers_and_explicit_images_dir(tmp_path):
  raw = make_mmc4(tmp_path)
  moved = tmp_path / "elsewhere"
  (raw / "images").rename(moved)
  serial, parallel = BadInputCounter(), BadInputCounter()
  one = list(read_documents("mmc4", str(raw), serial, images_dir=str(moved)))
  many = list(read_documents("mmc4", str(raw), parallel, images_dir=str(moved), num_workers=4))
  assert one == many
  check_mmc4_documents(many)
  assert parallel.counts_by_unit() == serial.counts_by_unit() == MMC4_SKIPS


def test_mmc4_select_decides_before_parsing(tmp_path):
  raw = make_mmc4(tmp_path)
  counter = BadInputCounter()
  docs = list(read_documents("mmc4", str(raw), counter, select=lambda doc_id: doc_id.endswith((":1", ":7"))))
  assert [d["doc_id"] for d in docs] == ["docs_shard_0_v2.jsonl:7"]
  assert counter.counts() == {"broken_json": 1}  # line 1 is broken; nothing else of the unselected lines is seen


def test_mmc4_oversized_file_not_read_whole(tmp_path, monkeypatch):
  raw = make_mmc4(tmp_path)
  monkeypatch.setattr(image_store, "MAX_FILE_BYTES", 100)
  counter = BadInputCounter()
  assert not list(read_documents("mmc4", str(raw), counter))
  assert counter.counts_by_unit()["image"] == {"bad_text_index": 1, "image_too_large": 5, "missing_image": 3,
                                               "unsafe_path": 2}


def test_mmc4_from_a_url_filesystem(tmp_path):
  """The same download behind a URL scheme (TF's ram:// stands in for gs://): every access goes through gfile."""
  raw = make_mmc4(tmp_path, image_tars=True)
  url = f"ram://lcl-test-{tmp_path.name}/raw"
  for path in raw.rglob("*"):
    if path.is_file():
      target = url + "/" + str(path.relative_to(raw))
      tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
      with tf.io.gfile.GFile(target, "wb") as f:
        f.write(path.read_bytes())
  counter = BadInputCounter()
  check_mmc4_documents(list(read_documents("mmc4", url, counter)))
  assert counter.counts_by_unit() == MMC4_SKIPS


def test_mmc4_texts_need_no_images(tmp_path):
  raw = make_mmc4(tmp_path)
  (raw / "images").rename(tmp_path / "gone")
  counter = BadInputCounter()
  texts = list(read_texts("mmc4", str(raw), counter))
  assert texts[:3] == ["Intro sentence.", "A red square follows.", "Closing words."]
  assert "Only missing images here." in texts and texts[-1] == "Zipped doc."
  assert counter.counts() == {"broken_json": 1, "empty_document": 1, "invalid_utf8": 2}


# ----------------------------------------------------------------------------------------------------------------
# OBELICS
# ----------------------------------------------------------------------------------------------------------------
def url(k):
  return f"https://example.com/img/{k}.jpg?size=large"


def sha1(entry):
  return hashlib.sha1(entry.encode("utf-8")).hexdigest()


def make_obelics(root, mapping_kind, fmt="parquet"):
  """Rows with dirt; images stored per `mapping_kind`. Returns (raw dir, images dir, mapping argument)."""
  raw, images = root / "raw", root / "raw" / "images"
  images.mkdir(parents=True)
  payload = {k: patterned_png(20 + k) for k in range(12)}
  payload[9] = b""  # a zero-byte download
  (root / "secret.png").write_bytes(patterned_png(98))
  table = {}
  for k, data in payload.items():
    if mapping_kind == "names":
      (images / f"{k}.png").write_bytes(data)
    elif mapping_kind == "sha1":
      (images / (sha1(url(k)) + (".png" if k % 2 else ""))).write_bytes(data)  # with and without extension
    else:
      name = f"files/{k:03d}.bin"
      (images / name).parent.mkdir(exist_ok=True)
      (images / name).write_bytes(data)
      table[url(k)] = name
  entry = (lambda k: f"{k}.png") if mapping_kind == "names" else url
  if mapping_kind in ("tsv", "json"):
    table[url(50)] = "../../secret.png"  # a hostile table entry
  rows = [
      obelics_row([("text", "Title"), ("image", entry(0)), ("text", "Para one."), ("image", entry(1)),
                   ("text", "The end.")]),
      obelics_row([("image", entry(2)), ("text", "Text after the first image.")]),
      obelics_row([("text", "Unmapped image only."), ("image", entry(40) if mapping_kind != "names" else "40.png")]),
      obelics_row([("text", "Too many.")] + [("image", entry(k)) for k in range(7)]),
      dict(images=[None, entry(0)], texts=["length mismatch"]),
      obelics_row([("text", "Image at the very end:"), ("image", entry(3))]),
      obelics_row([("text", "One zero-byte, one good."), ("image", entry(9)), ("image", entry(4))]),
      obelics_row([("text", "Hostile entry."),
                   ("image", "../../secret.png" if mapping_kind == "names" else url(50)), ("image", entry(5))]),
      obelics_row([("image", entry(6))]),  # no text
  ]
  if fmt == "parquet":
    mismatch = rows.pop(4)  # parquet cannot hold it in the same schema: put it in a JSON-lines file beside
    write_parquet(raw / "part-0.parquet", rows)
    write_jsonl(raw / "part-1.jsonl", [mismatch, b"{oops"])
  else:
    write_jsonl(raw / "part-0.jsonl", rows + [b"{oops"])
  mapping = None
  if mapping_kind == "sha1":
    mapping = "sha1"
  elif mapping_kind == "tsv":
    mapping = str(root / "map.tsv")
    (root / "map.tsv").write_text("url\tfile\n" + "".join(f"{u}\t{f}\n" for u, f in table.items()) + "junk\n")
  elif mapping_kind == "json":
    mapping = str(root / "map.json")
    (root / "map.json").write_text(json.dumps(table))
  return raw, images, mapping, payload


@pytest.mark.parametrize("mapping_kind", ["names", "sha1", "tsv", "json"])
def test_obelics_parquet_mappings(tmp_path, opened, mapping_kind):
  raw, images, mapping, payload = make_obelics(tmp_path, mapping_kind)
  counter = BadInputCounter()
  docs = list(read_documents("obelics", str(raw), counter, images_dir=str(images), mapping=mapping))
  ids = [d["doc_id"] for d in docs]
  assert ids == ["part-0.parquet:0", "part-0.parquet:1", "part-0.parquet:4", "part-0.parquet:5",
                 "part-0.parquet:6"]
  by_id = dict(zip(ids, docs))
  first = by_id["part-0.parquet:0"]
  assert first["texts"] == ["Title", "Para one.", "The end."] and first["image_text_index"] == [1, 2]
  assert first["placement"] == PLACEMENT_FIXED and first["image_sim"] == [1.0, 1.0]
  np.testing.assert_array_equal(decode(first["images"][1]), decode(payload[1]))
  assert by_id["part-0.parquet:1"]["image_text_index"] == [0]      # precedes the first text
  assert by_id["part-0.parquet:4"]["image_text_index"] == [1]      # after the last text: len(texts)
  assert len(by_id["part-0.parquet:5"]["images"]) == 1
  np.testing.assert_array_equal(decode(by_id["part-0.parquet:6"]["images"][0]), decode(payload[5]))
  # Row 2's image: absent file (names) or not in the mapping; row 7's hostile entry: refused or unmapped (sha1).
  expected_images = {"names": {"missing_image": 1, "unsafe_path": 1}, "sha1": {"unmapped_image": 2},
                     "tsv": {"unmapped_image": 1, "unsafe_path": 1}, "json": {"unmapped_image": 1, "unsafe_path": 1}}
  assert counter.counts_by_unit()["image"] == dict(
      sorted({"empty_file": 1, "in_dropped_document": 7, **expected_images[mapping_kind]}.items()))
  assert counter.counts_by_unit()["document"] == {"broken_json": 1, "empty_document": 1, "malformed_document": 1,
                                                  "no_usable_image": 1, "too_many_images": 1}
  assert not [p for p in opened if "secret" in p]
  if mapping_kind == "tsv":
    assert counter.counts_by_unit()["member"] == {"malformed_mapping_line": 1}


def test_obelics_jsonl(tmp_path):
  raw, images, mapping, _ = make_obelics(tmp_path, "names", fmt="jsonl")
  counter = BadInputCounter()
  docs = list(read_documents("obelics", str(raw), counter, mapping=mapping, num_workers=3))
  assert [d["doc_id"] for d in docs] == ["part-0.jsonl:0", "part-0.jsonl:1", "part-0.jsonl:5", "part-0.jsonl:6",
                                         "part-0.jsonl:7"]
  assert counter.counts_by_unit()["document"]["malformed_document"] == 1
  assert list(read_texts("obelics", str(raw), BadInputCounter()))[:3] == ["Title", "Para one.", "The end."]


# ----------------------------------------------------------------------------------------------------------------
# One shard in two encodings (readers/listing.py)
# ----------------------------------------------------------------------------------------------------------------
def zip_copy(path):
  """The `.jsonl.zip` download beside the `.jsonl` that unzipping it in place left."""
  target = path.with_name(path.name + ".zip")
  with zipfile.ZipFile(target, "w") as archive:
    archive.writestr(path.name, path.read_bytes())
  return target


def jsonl_copy(path):
  """A `.jsonl` conversion of a `.parquet` shard, beside it: the same rows."""
  return write_jsonl(path.with_suffix(".jsonl"), pq.read_table(path).to_pylist())


def names(paths):
  return [listing.basename(str(p)) for p in paths]


def test_listing_reads_one_file_per_shard(tmp_path):
  for name in ["a.parquet", "a.jsonl", "a.jsonl.zip", "b.jsonl", "b.jsonl.zip", "c.jsonl", "c.parquet.bak", "d.txt"]:
    (tmp_path / name).write_bytes(b"")
  read, ignored = listing.select_shards(str(tmp_path), obelics.SHARD_SUFFIXES)
  assert names(read) == ["a.parquet", "b.jsonl.zip", "c.jsonl"]
  assert {listing.basename(k): listing.basename(v) for k, v in ignored.items()} == {
      "a.jsonl": "a.parquet", "a.jsonl.zip": "a.parquet", "b.jsonl": "b.jsonl.zip"}
  assert names(listing.select_shards(str(tmp_path), mmc4.SHARD_SUFFIXES)[0]) == ["a.jsonl.zip", "b.jsonl.zip",
                                                                                   "c.jsonl"]
  # Split counters: each counts the files its select accepts; together each file left out is counted once.
  train, holdout = BadInputCounter(), BadInputCounter()
  assert listing.shards(str(tmp_path), obelics.SHARD_SUFFIXES, train, lambda n: n != "a.jsonl") == read
  listing.shards(str(tmp_path), obelics.SHARD_SUFFIXES, holdout, lambda n: n == "a.jsonl")
  assert train.counts_by_unit() == {"shard_file": {"duplicate_encoding": 2}}
  assert holdout.counts_by_unit() == {"shard_file": {"duplicate_encoding": 1}}


def test_mmc4_shard_in_two_encodings_read_once(tmp_path, monkeypatch):
  raw = make_mmc4(tmp_path)  # shard 0 as .jsonl, shard 1 as .jsonl.zip: two different shards, both read
  plain_docs, plain_texts = list(read_documents("mmc4", str(raw), BadInputCounter())), list(read_texts(
      "mmc4", str(raw), BadInputCounter()))
  zip_copy(raw / "docs_shard_0_v2.jsonl")
  logged = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: logged.append(msg % args))
  counter = BadInputCounter()
  docs = list(read_documents("mmc4", str(raw), counter))
  ids = ["docs_shard_0_v2.jsonl.zip:0", "docs_shard_0_v2.jsonl.zip:7", "docs_shard_1_v2.jsonl.zip:0"]
  assert [d["doc_id"] for d in docs] == ids  # each document once, from the zip
  assert [dict(d, doc_id=None) for d in docs] == [dict(d, doc_id=None) for d in plain_docs]
  assert counter.counts_by_unit() == {**MMC4_SKIPS, "shard_file": {"duplicate_encoding": 1}}
  duplicates = [m for m in logged if "duplicate_encoding" in m]
  assert len(duplicates) == 1 and str(raw / "docs_shard_0_v2.jsonl") + " (docs_shard_0_v2.jsonl.zip" in duplicates[0]
  assert names(shard_files("mmc4", str(raw))) == ["docs_shard_0_v2.jsonl.zip", "docs_shard_1_v2.jsonl.zip"]
  # Tokenizer training reads the same listing: every sentence once.
  texts_counter = BadInputCounter()
  assert list(read_texts("mmc4", str(raw), texts_counter)) == plain_texts
  assert texts_counter.counts()["duplicate_encoding"] == 1
  # The same as a folder holding only the zip.
  (raw / "docs_shard_0_v2.jsonl").unlink()
  assert list(read_documents("mmc4", str(raw), BadInputCounter())) == docs


def test_obelics_shard_in_two_encodings_read_once(tmp_path):
  raw, images, _, _ = make_obelics(tmp_path, "names")  # part-0.parquet and a different shard, part-1.jsonl
  parquet_only = BadInputCounter()
  expected = list(read_documents("obelics", str(raw), parquet_only, images_dir=str(images)))
  expected_texts = list(read_texts("obelics", str(raw), BadInputCounter()))
  jsonl_copy(raw / "part-0.parquet")
  counter = BadInputCounter()
  docs = list(read_documents("obelics", str(raw), counter, images_dir=str(images)))
  assert [d["doc_id"] for d in docs] == ["part-0.parquet:0", "part-0.parquet:1", "part-0.parquet:4",
                                         "part-0.parquet:5", "part-0.parquet:6"]
  assert docs == expected
  # part-1.jsonl (another shard) is still read: its length mismatch and broken line are counted.
  assert counter.counts_by_unit() == {**parquet_only.counts_by_unit(), "shard_file": {"duplicate_encoding": 1}}
  assert counter.counts_by_unit()["document"]["malformed_document"] == 1
  assert list(read_texts("obelics", str(raw), BadInputCounter())) == expected_texts
  assert names(shard_files("obelics", str(raw))) == ["part-0.parquet", "part-1.jsonl"]


# ----------------------------------------------------------------------------------------------------------------
# LAION
# ----------------------------------------------------------------------------------------------------------------
def make_laion(root):
  raw = root / "raw"
  jpg = image_bytes("JPEG", size=(20, 20), color=(250, 250, 0))
  members = [
      ("000000.jpg", jpg), ("000000.txt", b"  a yellow square  "), ("000000.json", b'{"caption": "ignored"}'),
      ("000007.jpg", image_bytes("JPEG", size=(20, 20), color=(0, 0, 250))),  # its caption comes at the end
      ("000001.png", patterned_png(30)), ("000001.txt", b"random pixels"),
      ("000002.jpg", jpg), ("000002.json", b'{"similarity": 0.3}'),             # image, no caption
      ("000003.txt", b"caption without image"),
      ("000004.webp", image_bytes("WEBP", size=(20, 20))), ("000004.json", b'{"caption": "from the json"}'),
      ("subdir", None),                                                         # a directory entry
      ("README", b"no extension"),
      ("../evil.jpg", jpg), ("/abs.jpg", jpg),                                  # unsafe names
      ("000005.jpg", b"GIF89a but not really"), ("000005.txt", b"undecodable image"),
      ("000006.mp4", b"\x00\x00"),
      ("000008.jpg", jpg), ("000008.txt", b"caf\xe9"),                          # invalid UTF-8 caption
      ("000009.jpg", jpg), ("000009.txt", b"  \n"), ("000009.json", b"{"),     # blank txt, broken json
      ("000010.jpg", "symlink:/etc/passwd"),
      (".hidden.txt", b"dot file"),
      ("000011.jpg", jpg), ("000011.jpg", jpg), ("000011.txt", b"duplicate image member"),
      ("000007.txt", b"blue square, late caption"),
  ]
  write_tar(raw / "00000.tar", members)
  write_tar(raw / "00001.tar", [("000000.png", patterned_png(31)), ("000000.txt", b"second shard")])
  (raw / "00000.parquet").write_bytes(b"PAR1 ignored")
  return raw


def test_laion_dirt(tmp_path):
  raw = make_laion(tmp_path)
  counter = BadInputCounter()
  docs = list(read_documents("laion", str(raw), counter))
  assert [d["doc_id"] for d in docs] == ["00000.tar:000000", "00000.tar:000007", "00000.tar:000001",
                                         "00000.tar:000004", "00000.tar:000011",
                                         "00001.tar:000000"]
  captions = [d["texts"] for d in docs]
  assert captions == [["a yellow square"], ["blue square, late caption"], ["random pixels"], ["from the json"],
                      ["duplicate image member"], ["second shard"]]
  for d in docs:
    assert d["image_text_index"] == [0] and d["image_sim"] == [1.0] and d["placement"] == PLACEMENT_RANDOM
    assert tf.io.decode_image(d["images"][0], channels=3).shape.rank == 3
  np.testing.assert_array_equal(decode(docs[2]["images"][0]), decode(patterned_png(30)))
  assert counter.counts_by_unit() == {
      "document": {"invalid_utf8": 1, "missing_caption": 2, "missing_image": 1, "no_usable_image": 1},
      "image": {"not_an_image": 1},
      "member": {"broken_json": 1, "duplicate_member": 1, "odd_member_name": 4, "unknown_member": 1,
                 "unsafe_path": 2},
  }


def test_laion_oversized_member_not_read(tmp_path, monkeypatch):
  raw = make_laion(tmp_path)
  assert len(patterned_png(30)) > 700 > len(image_bytes("WEBP", size=(20, 20)))
  monkeypatch.setattr(laion, "MAX_FILE_BYTES", 700)
  counter = BadInputCounter()
  docs = list(read_documents("laion", str(raw), counter, num_workers=2))
  assert [d["doc_id"] for d in docs] == ["00000.tar:000000", "00000.tar:000007", "00000.tar:000004",
                                         "00000.tar:000011"]
  assert counter.counts_by_unit()["image"] == {"image_too_large": 2, "not_an_image": 1}


def test_laion_texts_skip_images(tmp_path, monkeypatch):
  raw = make_laion(tmp_path)
  monkeypatch.setattr(laion, "validate_image", lambda *a, **k: pytest.fail("images must not be decoded"))
  texts = list(read_texts("laion", str(raw), BadInputCounter()))
  assert texts == ["a yellow square", "blue square, late caption", "random pixels", "from the json",
                   "undecodable image", "duplicate image member", "second shard"]


@pytest.mark.parametrize("source", ["mmc4", "obelics"])
def test_missing_image_folder_is_an_error_not_dirt(tmp_path, source):
  raw = make_mmc4(tmp_path) if source == "mmc4" else make_obelics(tmp_path, "names")[0]
  with pytest.raises(ValueError, match="does not exist"):
    list(read_documents(source, str(raw), BadInputCounter(), images_dir=str(tmp_path / "nowhere")))


def test_unknown_source_and_misplaced_options(tmp_path):
  with pytest.raises(ValueError, match="Unknown source"):
    read_documents("coyo", str(tmp_path), BadInputCounter())
  with pytest.raises(ValueError, match="images_dir"):
    read_documents("laion", str(tmp_path), BadInputCounter(), images_dir="x")
  with pytest.raises(ValueError, match="OBELICS"):
    read_documents("mmc4", str(tmp_path), BadInputCounter(), mapping="sha1")
