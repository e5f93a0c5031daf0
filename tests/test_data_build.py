"""data_pipelines.build: raw shards -> TFDS -> load_documents round trips, the report, determinism, splits, CLI."""
import json

from absl import flags
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipelines import build as build_lib
from data_pipelines import builders
from data_pipelines.bad_input import BadInputCounter
from data_pipelines.build import build, load_documents, report_path
from data_pipelines.readers import read_documents
from test_data_readers import MMC4_SKIPS, jsonl_copy, make_laion, make_mmc4, make_obelics, zip_copy


def as_python(example) -> dict:
  """A load_documents example (numpy) in the reader's python schema."""
  return dict(doc_id=example["doc_id"].decode(), source=example["source"].decode(),
              texts=[t.decode() for t in example["texts"]], images=[bytes(b) for b in example["images"]],
              image_text_index=[int(i) for i in example["image_text_index"]],
              image_sim=[float(s) for s in example["image_sim"]], placement=int(example["placement"]))


def loaded(source, data_dir, split="train", **kwargs) -> list[dict]:
  return [as_python(e) for e in tfds.as_numpy(load_documents(source, str(data_dir), split, **kwargs))]


def same_documents(built: list[dict], read: list[dict]):
  assert sorted(d["doc_id"] for d in built) == sorted(d["doc_id"] for d in read)
  by_id = {d["doc_id"]: d for d in read}
  for document in built:
    expected = dict(by_id[document["doc_id"]])
    assert document["image_sim"] == pytest.approx(expected.pop("image_sim"))  # stored as float32
    assert {k: v for k, v in document.items() if k != "image_sim"} == expected


def without_time(report: dict) -> dict:
  return {k: v for k, v in report.items() if k != "build_seconds"}


def tfrecords(data_dir, source):
  version_dir = data_dir / builders.dataset_name(source) / builders.VERSION
  return {p.name: p.read_bytes() for p in sorted(version_dir.glob("*.tfrecord*"))}


def test_mmc4_round_trip_report_and_determinism(tmp_path):
  raw = make_mmc4(tmp_path)
  data_dir = tmp_path / "tfds"
  report = build("mmc4", str(raw), str(data_dir))

  read = list(read_documents("mmc4", str(raw), BadInputCounter()))
  same_documents(loaded("mmc4", data_dir), read)
  assert report["documents"] == {"read": 8, "kept": 3, "skipped": MMC4_SKIPS["document"]}
  assert report["images"] == {"read": 11, "kept": 4, "skipped": MMC4_SKIPS["image"]}
  assert report["members"] == {"skipped": {}}
  assert report["shards"] == {"read": 2, "ignored": {}}
  assert report["splits"] == {"train": {"documents": 3, "images": 4}}
  assert report["bytes"]["images_kept"] == sum(len(b) for d in read for b in d["images"])
  assert report["bytes"]["texts_kept"] == sum(len(t.encode()) for d in read for t in d["texts"])
  assert report["bytes"]["dataset_files"] > report["bytes"]["images_kept"]
  assert report["dataset"] == "lcl_mmc4" and report["build_seconds"] >= 0
  with open(report_path("mmc4", str(data_dir))) as f:
    assert json.load(f) == report

  # An existing build is reused, not redone.
  assert build("mmc4", str(raw), str(data_dir)) == report
  # A rebuild gives the same report, the same examples in the same order, byte for byte, whatever the workers.
  first_files = tfrecords(data_dir, "mmc4")
  again = build("mmc4", str(raw), str(data_dir), overwrite=True, num_workers=3)
  assert without_time(again) == without_time(report)
  assert tfrecords(data_dir, "mmc4") == first_files


def test_registered_name_and_spec(tmp_path):
  raw = make_mmc4(tmp_path)
  build("mmc4", str(raw), str(tmp_path / "tfds"))
  builder = tfds.builder("lcl_mmc4", data_dir=str(tmp_path / "tfds"))
  assert isinstance(builder, builders.LclMmc4)
  spec = builder.as_dataset(split="train").element_spec
  assert set(spec) == {"doc_id", "source", "texts", "images", "image_text_index", "image_sim", "placement"}
  assert spec["images"].dtype == tf.string and spec["images"].shape.as_list() == [None]
  assert spec["image_text_index"].dtype == tf.int32 and spec["image_sim"].dtype == tf.float32
  assert spec["placement"].shape.rank == 0


def test_laion_holdout_split(tmp_path):
  raw = make_laion(tmp_path)
  report = build("laion", str(raw), str(tmp_path / "tfds"), holdout_fraction=0.5)
  train, holdout = loaded("laion", tmp_path / "tfds"), loaded("laion", tmp_path / "tfds", "validation")
  assert train and holdout
  same_documents(train + holdout, list(read_documents("laion", str(raw), BadInputCounter())))
  assert all(builders.in_holdout(d["doc_id"], 0.5) for d in holdout)
  assert not any(builders.in_holdout(d["doc_id"], 0.5) for d in train)
  assert report["splits"] == {"train": {"documents": len(train), "images": len(train)},
                              "validation": {"documents": len(holdout), "images": len(holdout)}}
  # Each split counted only its own dirt; together they are the whole input's.
  whole = BadInputCounter()
  list(read_documents("laion", str(raw), whole))
  by_unit = whole.counts_by_unit()
  assert report["documents"]["skipped"] == by_unit["document"]
  assert report["images"]["skipped"] == by_unit["image"]
  assert report["members"]["skipped"] == by_unit["member"]
  assert report["documents"]["read"] == len(train) + len(holdout) + sum(by_unit["document"].values())


def test_obelics_cli_with_file_shards(tmp_path):
  raw, images, mapping, _ = make_obelics(tmp_path, "sha1")
  values = flags.FlagValues()
  build_lib._define_flags(values)  # pylint: disable=protected-access
  values(["build", "--source=obelics", f"--input={raw}", f"--data_dir={tmp_path / 'tfds'}", f"--images={images}",
          "--mapping=sha1", "--num_shards=2", "--num_workers=2"])
  report = build_lib.run(values)
  assert report["documents"]["kept"] == 5 and report["images"]["kept"] == 6
  assert len(tfrecords(tmp_path / "tfds", "obelics")) == 2
  everything = loaded("obelics", tmp_path / "tfds")
  # Per-host reading: each of two input pipelines gets whole files, together all documents exactly once.
  parts = [loaded("obelics", tmp_path / "tfds", read_config=tfds.ReadConfig(
      input_context=tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i))) for i in range(2)]
  assert all(parts) and sorted(d["doc_id"] for p in parts for d in p) == sorted(d["doc_id"] for d in everything)
  same_documents(everything, list(read_documents("obelics", str(raw), BadInputCounter(), images_dir=str(images),
                                                 mapping="sha1")))


def counted_sections(report: dict) -> dict:
  """What read = kept + skipped is about: equal for the same documents whatever the encodings of their shards."""
  return {k: report[k] for k in ("documents", "images", "members", "splits")}


def test_mmc4_shard_in_two_encodings_built_once(tmp_path):
  raw = make_mmc4(tmp_path)  # docs_shard_0_v2.jsonl and a different shard, docs_shard_1_v2.jsonl.zip
  zip_copy(raw / "docs_shard_0_v2.jsonl")
  both = build("mmc4", str(raw), str(tmp_path / "both"), holdout_fraction=0.5)
  ids = sorted(d["doc_id"] for split in ("train", "validation") for d in loaded("mmc4", tmp_path / "both", split))
  assert ids == ["docs_shard_0_v2.jsonl.zip:0", "docs_shard_0_v2.jsonl.zip:7", "docs_shard_1_v2.jsonl.zip:0"]
  assert both["shards"] == {"read": 2, "ignored": {"docs_shard_0_v2.jsonl": "docs_shard_0_v2.jsonl.zip"}}
  assert both["documents"] == {"read": 8, "kept": 3, "skipped": MMC4_SKIPS["document"]}
  assert both["images"] == {"read": 11, "kept": 4, "skipped": MMC4_SKIPS["image"]}
  assert both["members"] == {"skipped": {}}  # the file left out is named under shards, not counted as a member

  (raw / "docs_shard_0_v2.jsonl").unlink()  # the same folder with one encoding per shard
  one = build("mmc4", str(raw), str(tmp_path / "one"), holdout_fraction=0.5)
  assert counted_sections(one) == counted_sections(both)
  assert one["shards"] == {"read": 2, "ignored": {}}


def test_obelics_shard_in_two_encodings_built_once(tmp_path):
  raw, images, _, _ = make_obelics(tmp_path, "names")  # part-0.parquet and a different shard, part-1.jsonl
  one = build("obelics", str(raw), str(tmp_path / "one"), images_dir=str(images))
  jsonl_copy(raw / "part-0.parquet")
  both = build("obelics", str(raw), str(tmp_path / "both"), images_dir=str(images))
  ids = [d["doc_id"] for d in loaded("obelics", tmp_path / "both")]
  assert sorted(ids) == sorted(d["doc_id"] for d in loaded("obelics", tmp_path / "one"))
  assert sorted(ids) == ["part-0.parquet:0", "part-0.parquet:1", "part-0.parquet:4", "part-0.parquet:5",
                         "part-0.parquet:6"]
  assert counted_sections(both) == counted_sections(one)
  assert both["documents"]["read"] == 10 and both["documents"]["kept"] == 5  # 8 parquet rows + 2 lines of part-1
  assert both["shards"] == {"read": 2, "ignored": {"part-0.jsonl": "part-0.parquet"}}
  assert one["shards"] == {"read": 2, "ignored": {}}


def test_empty_input_refused(tmp_path):
  (tmp_path / "raw").mkdir()
  with pytest.raises(ValueError, match="No mmc4 shards"):
    build("mmc4", str(tmp_path / "raw"), str(tmp_path / "tfds"))
