"""data_pipelines.clip_tokenizer: the LCL authors' ids (tests/fixtures/clip_tokenizer_ids.json, written with their
code by tools/clip_tokenizer_fixture.py), the one deliberate difference (no special ids from text), the layout, the
factory and a pipeline run on it. No torch."""
import collections
import json
import os

import numpy as np
import pytest

from configs import vitb16_mmc4
from data_pipelines import clip_tokenizer, pipeline, rows, tokenizer as tokenizer_lib
from data_pipelines.clip_tokenizer import SPECIAL_TOKENS, ClipTokenizer
from data_pipelines.errors import DataSetupError
from pipeline_corpus import laion_docs, mmc4_docs, write_source

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "clip_tokenizer_ids.json")
FIRST_SPECIAL = 49406


@pytest.fixture(scope="module")
def tok():
  return ClipTokenizer()


@pytest.fixture(scope="module")
def fixture():
  with open(FIXTURE, encoding="utf-8") as f:
    return json.load(f)


def _differences(pairs):
  """(label, want, got) -> the labels that differ, with the first differing position of each."""
  out = []
  for label, want, got in pairs:
    if want != got:
      at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
      out.append(f"{label} (first at {at}: want {want[at:at + 5]}, got {got[at:at + 5]})")
  return out


def test_every_fixture_string_gives_the_authors_ids(tok, fixture):
  strings = fixture["strings"]
  assert len(strings) >= 40 and {"empty", "whitespace_only", "long_mixed", "mojibake_mona_lisa"} <= {
      s["name"] for s in strings}
  assert len(next(s for s in strings if s["name"] == "long_mixed")["text"]) > 5000
  bad = _differences((s["name"], s["ids"], tok.encode(s["text"])) for s in strings)
  assert not bad, f"{len(bad)} of {len(strings)} strings differ from the authors' ids: {bad}"


def test_sentences_encoded_one_by_one_give_the_authors_joined_document(tok, fixture):
  # Their MMC4 loader encodes " ".join(sentences); rows.py encodes each text piece and concatenates.
  docs = fixture["joined"]
  bad = _differences((repr(d["sentences"]), d["ids"], [i for s in d["sentences"] for i in tok.encode(s)])
                     for d in docs)
  assert not bad, f"{len(bad)} of {len(docs)} documents differ: {bad}"


def test_layout_matches_the_authors(tok, fixture):
  assert tok.vocab_size == clip_tokenizer.VOCAB_SIZE == fixture["vocab_size"] == 49411
  assert fixture["specials"] == {"<start_of_text>": tok.bos_id, "<end_of_text>": tok.eos_id,
                                 "<img_placehold>": tok.img_id, "<start_of_img>": tok.boi_id,
                                 "<end_of_img>": tok.eoi_id}
  assert SPECIAL_TOKENS == dict(pad=0, bos=49406, eos=49407, img=49408, boi=49409, eoi=49410)
  assert {role: getattr(tok, f"{role}_id") for role in SPECIAL_TOKENS} == SPECIAL_TOKENS
  assert tok.unk_id is None
  pieces = [tok.id_to_piece(i) for i in (0, 187, 188, 255, 256, 512, 49405, 49409)]
  assert pieces == ["!", "ÿ", "Ā", "Ń", "!</w>", "in", "jekyll</w>", "<start_of_img>"]  # Ā: byte 0
  assert tok.encode("!") == [256] and tok.encode("!$") == [0, 259]  # id 0 is text too: padding is segment 0
  with pytest.raises(IndexError):
    tok.id_to_piece(49411)
  with open(clip_tokenizer.VOCAB_PATH, "rb") as f:
    assert tok.serialized_model == f.read() and tok.path == clip_tokenizer.VOCAB_PATH


def test_special_strings_in_text_are_ordinary_characters(tok, fixture):
  # The one deliberate difference: the authors' pattern turns these strings into the special ids.
  for entry in fixture["special_strings"]:
    assert set(entry["ids"]) & set(range(FIRST_SPECIAL, 49411)), entry  # theirs: a forged marker
    ours = tok.encode(entry["text"])
    assert ours and max(ours) < FIRST_SPECIAL, entry["text"]
  words = ["<", "start", "_", "of", "_", "img", ">"]
  assert tok.encode("<start_of_img>") == [i for w in words for i in tok.encode(w)]
  assert tok.decode(tok.encode("a <START_OF_IMG> b")) == "a < start _ of _ img > b"
  every_id = [i for s in fixture["strings"] for i in s["ids"]]
  assert max(every_id) < FIRST_SPECIAL  # the parity strings hold no special text


def test_decode_round_trips_cleaned_lowercase_text(tok):
  for text, cleaned in (("A Photo of  a DOG", "a photo of a dog"),
                        ("  the quick\tbrown\nfox  ", "the quick brown fox"),
                        ("Größenwahn in MÜNCHEN", "größenwahn in münchen"),
                        ("Tom &amp;amp; Jerry", "tom & jerry"),
                        ("今天天气很好", "今天天气很好"),
                        ("", "")):
    assert clip_tokenizer.clean(text) == cleaned
    assert tok.decode(tok.encode(text)) == cleaned, text
  assert tok.decode(tok.encode("hello, world!")) == "hello , world !"  # CLIP keeps no spacing around punctuation


def test_decode_specials(tok):
  ids = [tok.bos_id] + tok.encode("the cat") + [tok.boi_id, tok.img_id, tok.img_id, tok.eoi_id, tok.eos_id]
  assert tok.decode(ids) == "the cat"
  assert tok.decode(ids, show_special=True) == (
      "<start_of_text>the cat <start_of_img><img_placehold><img_placehold><end_of_img><end_of_text>")
  lead_byte = next(i for i in range(256) if tok.id_to_piece(i) == "\u00c3")  # the first UTF-8 byte of "é"
  assert tok.decode(tok.encode("caf\u00e9") + [lead_byte]) == "caf\u00e9 \ufffd"  # a cut character


def test_a_damaged_merges_file_is_refused(tmp_path):
  import gzip  # pylint: disable=import-outside-toplevel
  short = tmp_path / "short.txt.gz"
  short.write_bytes(gzip.compress("#version: 0.2\ni n\nt h\n".encode()))
  with pytest.raises(DataSetupError, match="48894 merges"):
    ClipTokenizer(str(short))


def test_factory_picks_the_tokenizer_by_spec(tmp_path):
  from lcl_jax.evaluators import datasets  # pylint: disable=import-outside-toplevel
  assert isinstance(tokenizer_lib.load_tokenizer("clip_bpe"), ClipTokenizer)
  config = vitb16_mmc4.get_config()
  config.data.tokenizer = "clip_bpe"
  assert isinstance(datasets.load_tokenizer(config), ClipTokenizer)
  corpus = [f"the {w} sat on the mat near the {v}." for w in ("cat", "dog", "owl") for v in ("door", "tree")]
  path = tokenizer_lib.train_tokenizer(corpus * 20, 25, str(tmp_path / "sp.model"))
  sp = tokenizer_lib.load_tokenizer(path)
  assert type(sp) is tokenizer_lib.Tokenizer and sp.vocab_size == 25
  with pytest.raises(Exception, match="clip_bpe"):  # a path ending in clip_bpe is a SentencePiece file
    tokenizer_lib.load_tokenizer(str(tmp_path / "clip_bpe"))


def test_row_builder_writes_the_authors_markers(tok):
  doc = dict(doc_id="d", source="mmc4", texts=["A dog.", "It's sitting!"], images=[b"x"], image_text_index=[1],
             image_sim=[0.9], placement=0)
  row = rows.mmc4_row(doc, np.random.default_rng(0), tok, seq_len=24, patches_per_image=3)
  n = int((row.segment_ids > 0).sum())
  first, second = tok.encode("A dog."), tok.encode("It's sitting!")
  span = [49409, 49408, 49408, 49408, 49410]  # the image, matched to the second sentence: before or after it
  assert row.tokens[:n].tolist() in ([49406] + first + span + second + [49407],
                                     [49406] + first + second + span + [49407])
  assert not row.tokens[n:].any()  # padding id 0


def _clip_config(data_dir):
  config = vitb16_mmc4.get_config("runlocal")
  config.model.vit.image_size, config.model.vit.patch_size = 16, 8  # 4 <img> per span
  config.model.decoder.vocab_size = clip_tokenizer.VOCAB_SIZE
  config.model.special_tokens = dict(SPECIAL_TOKENS)
  config.data.sources = {"lcl_laion": 1.0, "lcl_mmc4": 1.0}
  config.data.update(dict(data_dir=str(data_dir), tokenizer="clip_bpe", seq_len=64, rows_per_batch=4,
                          images_per_batch=16, block_docs=4, decode_threads=1))
  return config


def test_a_pipeline_on_clip_bpe_builds_rows_of_its_ids(tmp_path, tok):
  docs = {"laion": laion_docs(6), "mmc4": mmc4_docs(4, max_images=2)}
  for source, source_docs in docs.items():
    write_source(tmp_path, source, source_docs)
  texts = {d["doc_id"]: d["texts"] for source_docs in docs.values() for d in source_docs}
  data = pipeline.Pipeline(_clip_config(tmp_path), num_chunks=1, train=False)
  try:
    assert isinstance(data.tokenizer, ClipTokenizer)
    batch, _, info = data.next_with_info()
  finally:
    data.close()
  tokens, segments = batch["tokens"], batch["segment_ids"]
  assert tokens.max() <= 49410
  checked = collections.Counter()
  for r, row_info in enumerate(info):
    if row_info is None:
      continue
    for s, doc_id in enumerate(row_info["doc_ids"], start=1):
      seg = tokens[r][segments[r] == s].tolist()
      assert seg[0] == 49406 and seg[-1] == 49407, (doc_id, seg)
      assert seg.count(49409) == seg.count(49410) >= 1 and seg.count(49408) == 4 * seg.count(49409)
      words = [i for i in seg if i < FIRST_SPECIAL]
      assert words == [i for t in texts[doc_id] for i in tok.encode(t)], doc_id
      checked[row_info["source"]] += 1
  assert sum(checked.values()) >= 4, checked


def test_a_config_with_other_special_ids_is_refused(tmp_path):
  config = _clip_config(tmp_path)
  config.model.special_tokens = vitb16_mmc4.get_config().model.special_tokens  # SentencePiece's 0..6
  with pytest.raises(DataSetupError, match="special_tokens"):
    pipeline.Pipeline(config, num_chunks=1)
