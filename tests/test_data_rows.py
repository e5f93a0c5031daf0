"""Row building (data_pipelines/rows.py) on hand-made documents, with exact expected arrays where practical."""
import numpy as np
import pytest

from configs.common import SPECIAL_TOKENS
from data_pipelines import rows

PAD, BOS, EOS, BOI, EOI, IMG = (SPECIAL_TOKENS[k] for k in ("pad", "bos", "eos", "boi", "eoi", "img"))
K = 2  # patches per image in the hand-made examples: a span is [BOI, IMG, IMG, EOI]
SPAN = [BOI] + [IMG] * K + [EOI]


class FakeTokenizer:
  """Text is written as the ids themselves ("10 11" -> [10, 11]), so expected rows can be read off the document."""
  pad_id, bos_id, eos_id = PAD, BOS, EOS
  boi_id, eoi_id, img_id = BOI, EOI, IMG

  def __init__(self):
    self.calls = 0

  def encode(self, text):
    self.calls += 1
    return [int(w) for w in text.split()]


class FixedRng:
  """Stands in for numpy's Generator where a test needs to fix every draw: random() < 0.5 means 'before'."""

  def __init__(self, randoms=(), integers=()):
    self._randoms, self._integers = list(randoms), list(integers)

  def random(self):
    return self._randoms.pop(0)

  def integers(self, n):
    value = self._integers.pop(0)
    assert 0 <= value < n
    return value


BEFORE, AFTER = 0.1, 0.9
TOK = FakeTokenizer()


def doc(texts, index, sims=None, *, images=None, placement=0, doc_id="d"):
  images = images if images is not None else [f"img{k}".encode() for k in range(len(index))]
  return dict(doc_id=doc_id, source="obelics" if placement else "mmc4", texts=list(texts), images=images,
              image_text_index=list(index), image_sim=list(sims if sims is not None else [1.0] * len(index)),
              placement=placement)


def spans_of(row, k=K):
  """Checks every span is exactly <boi> <img>*k <eoi> and counts them; no stray <img>/<eoi> anywhere."""
  tokens = list(row.tokens)
  n, i = 0, 0
  while i < len(tokens):
    if tokens[i] == BOI:
      assert tokens[i + 1:i + 2 + k] == [IMG] * k + [EOI], tokens
      assert len(set(row.segment_ids[i:i + k + 2])) == 1, "a span crosses a segment boundary"
      n += 1
      i += k + 2
    else:
      assert tokens[i] not in (IMG, EOI), tokens
      i += 1
  assert n == len(row.images)
  return n


def check_layout(row, seq_len):
  """Shapes and dtypes; padding only at the end, with segment 0 and position 0; positions restart per segment."""
  for a in (row.tokens, row.segment_ids, row.positions):
    assert a.shape == (seq_len,) and a.dtype == np.int32
  n = int((row.segment_ids > 0).sum())
  assert (row.segment_ids[:n] > 0).all() and (row.segment_ids[n:] == 0).all()
  assert (row.tokens[n:] == PAD).all() and (row.positions[n:] == 0).all() and (row.tokens[:n] != PAD).all()
  expected_pos, seg, pos = [], None, 0
  for s in row.segment_ids[:n]:
    pos = pos + 1 if s == seg else 0
    seg = s
    expected_pos.append(pos)
  np.testing.assert_array_equal(row.positions[:n], expected_pos)
  assert list(np.unique(row.segment_ids[:n])) == list(range(1, len(set(row.segment_ids[:n])) + 1))


def test_placement_values_match_the_reader_schema():
  from data_pipelines.readers import schema  # pylint: disable=import-outside-toplevel  # imports tensorflow
  assert (rows.PLACEMENT_RANDOM, rows.PLACEMENT_FIXED) == (schema.PLACEMENT_RANDOM, schema.PLACEMENT_FIXED)


def test_image_span_uses_the_special_ids():
  assert SPECIAL_TOKENS == dict(pad=0, bos=1, eos=2, boi=3, eoi=4, img=5, unk=6)
  assert rows.image_span(TOK, 3) == [3, 5, 5, 5, 4]


# ---------------------------------------------------------------------------------------------------------------------
# MMC4


def test_mmc4_exact_rows_before_and_after():
  d = doc(["10 11", "12"], [0])
  before = rows.mmc4_row(d, FixedRng([BEFORE]), TOK, seq_len=12, patches_per_image=K)
  after = rows.mmc4_row(d, FixedRng([AFTER]), TOK, seq_len=12, patches_per_image=K)
  np.testing.assert_array_equal(before.tokens, [BOS, *SPAN, 10, 11, 12, EOS, PAD, PAD, PAD])
  np.testing.assert_array_equal(after.tokens, [BOS, 10, 11, *SPAN, 12, EOS, PAD, PAD, PAD])
  np.testing.assert_array_equal(after.segment_ids, [1] * 9 + [0] * 3)
  np.testing.assert_array_equal(after.positions, list(range(9)) + [0] * 3)
  assert before.images == after.images == [b"img0"] and after.doc_ids == ["d"]


def test_mmc4_similarity_threshold_is_inclusive():
  d = doc(["10", "11", "12"], [0, 1, 2], [0.30, 0.2399, 0.24])
  row = rows.mmc4_row(d, np.random.default_rng(0), TOK, seq_len=64, patches_per_image=K)
  assert row.images == [b"img0", b"img2"]
  assert spans_of(row) == 2
  assert rows.mmc4_row(d, np.random.default_rng(0), TOK, seq_len=64, patches_per_image=K,
                       sim_threshold=0.35) is None


def test_mmc4_document_without_usable_image_is_none():
  rng = np.random.default_rng(0)
  assert rows.mmc4_row(doc(["10"], []), rng, TOK, seq_len=32, patches_per_image=K) is None
  assert rows.mmc4_row(doc(["10"], [0], [0.1]), rng, TOK, seq_len=32, patches_per_image=K) is None


def test_mmc4_one_image_per_sentence_chosen_at_random():
  d = doc(["10", "11"], [0, 0, 1], [0.3, 0.3, 0.3])
  # Fixed draws: keep the second candidate of sentence 0, then place both kept images before their sentence.
  row = rows.mmc4_row(d, FixedRng([BEFORE, BEFORE], [1]), TOK, seq_len=32, patches_per_image=K)
  np.testing.assert_array_equal(row.tokens[:12], [BOS, *SPAN, 10, *SPAN, 11, EOS])
  assert row.images == [b"img1", b"img2"]
  picks = [rows.mmc4_row(d, np.random.default_rng(s), TOK, seq_len=32, patches_per_image=K).images[0]
           for s in range(400)]
  n = picks.count(b"img0")
  assert picks.count(b"img0") + picks.count(b"img1") == 400
  assert abs(n - 200) < 5 * np.sqrt(400 * 0.25), n  # both candidates, uniformly


def test_mmc4_keeps_the_first_six_in_sentence_order():
  # Eight images listed in reverse sentence order: the kept ones are those of sentences 0..5, in sentence order.
  texts = [str(10 + j) for j in range(8)]
  index = list(reversed(range(8)))
  images = [f"on{j}".encode() for j in index]
  row = rows.mmc4_row(doc(texts, index, images=images), np.random.default_rng(1), TOK, seq_len=256,
                      patches_per_image=K)
  assert row.images == [f"on{j}".encode() for j in range(6)]
  assert spans_of(row) == 6
  assert 17 in row.tokens and 16 in row.tokens  # the text of every sentence stays
  few = rows.mmc4_row(doc(texts, index, images=images), np.random.default_rng(1), TOK, seq_len=256,
                      patches_per_image=K, max_images=2)
  assert few.images == [b"on0", b"on1"]


def test_mmc4_before_after_frequency_is_one_half():
  d = doc(["10", "11"], [1])
  rng = np.random.default_rng(123)
  n, before = 4000, 0
  for _ in range(n):
    row = rows.mmc4_row(d, rng, TOK, seq_len=16, patches_per_image=K)
    before += int(row.tokens[2] == BOI)  # [BOS, 10, BOI ...] = before sentence 1
  assert abs(before - n / 2) < 4 * np.sqrt(n * 0.25), before


def test_mmc4_truncation_cuts_before_a_span_that_does_not_fit():
  d = doc(["10 11", "12 13", "14 15"], [0, 1, 2])
  # Full row: BOS 10 11 SPAN 12 13 SPAN 14 15 SPAN EOS = 19 tokens. With 12, the second span does not fit whole.
  row = rows.mmc4_row(d, FixedRng([AFTER] * 3), TOK, seq_len=12, patches_per_image=K)
  np.testing.assert_array_equal(row.tokens, [BOS, 10, 11, *SPAN, 12, 13, EOS, PAD, PAD])
  assert row.images == [b"img0"]
  # Exactly full: the span fits with only the closing </s> after it.
  row = rows.mmc4_row(d, FixedRng([AFTER] * 3), TOK, seq_len=14, patches_per_image=K)
  np.testing.assert_array_equal(row.tokens, [BOS, 10, 11, *SPAN, 12, 13, *SPAN, EOS])
  assert row.images == [b"img0", b"img1"]
  check_layout(row, 14)


def test_mmc4_text_only_overflow_is_truncated_and_ends_with_eos():
  d = doc(["10 11 12 13 14 15 16 17 18 19", "20"], [1])
  row = rows.mmc4_row(d, FixedRng([BEFORE]), TOK, seq_len=8, patches_per_image=K)
  np.testing.assert_array_equal(row.tokens, [BOS, 10, 11, 12, 13, 14, 15, EOS])
  assert row.images == []  # the document had an image, but the text before it fills the row
  d = doc(["10 11 12 13 14 15 16 17 18 19"], [0])
  row = rows.mmc4_row(d, FixedRng([BEFORE]), TOK, seq_len=10, patches_per_image=K)
  np.testing.assert_array_equal(row.tokens, [BOS, *SPAN, 10, 11, 12, 13, EOS])
  assert row.images == [b"img0"]


def test_mmc4_random_documents_keep_every_invariant():
  rng = np.random.default_rng(7)
  data = np.random.default_rng(8)
  for _ in range(300):
    n_text = int(data.integers(1, 8))
    texts = [" ".join(str(w) for w in data.integers(6, 50, size=data.integers(0, 12))) for _ in range(n_text)]
    n_img = int(data.integers(0, 9))
    d = doc(texts, data.integers(0, n_text, size=n_img), data.uniform(0.1, 0.4, size=n_img))
    seq_len = int(data.integers(8, 60))
    row = rows.mmc4_row(d, rng, TOK, seq_len=seq_len, patches_per_image=K)
    if row is None:
      continue
    check_layout(row, seq_len)
    assert spans_of(row) <= 6
    n = int((row.segment_ids > 0).sum())
    assert row.tokens[0] == BOS and row.tokens[n - 1] == EOS and (row.segment_ids[:n] == 1).all()


def test_mmc4_tokenizes_each_text_piece_once():
  tok = FakeTokenizer()
  rows.mmc4_row(doc(["10", "11", "12"], [0, 1, 2]), np.random.default_rng(0), tok, seq_len=64, patches_per_image=K)
  assert tok.calls == 3


def test_numpy_documents_as_tfds_returns_them():
  d = doc(["10 11", "12"], [0, 1], [0.3, 0.5])
  as_tfds = dict(doc_id=np.bytes_(b"d"), source=np.bytes_(b"mmc4"),
                 texts=np.array([t.encode() for t in d["texts"]], dtype=object),
                 images=np.array(d["images"], dtype=object), image_text_index=np.array([0, 1], np.int32),
                 image_sim=np.array([0.3, 0.5], np.float32), placement=np.int32(0))
  a = rows.mmc4_row(d, np.random.default_rng(5), TOK, seq_len=32, patches_per_image=K)
  b = rows.mmc4_row(as_tfds, np.random.default_rng(5), TOK, seq_len=32, patches_per_image=K)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert a.images == b.images and b.doc_ids == ["d"] and all(type(x) is bytes for x in b.images)


def test_rows_are_deterministic_given_the_seed():
  docs = [doc([f"{10 + j} {20 + j}" for j in range(4)], [0, 1, 2, 3], doc_id=str(i)) for i in range(20)]

  def run(seed):
    rng = np.random.default_rng(seed)
    out = [rows.mmc4_row(d, rng, TOK, seq_len=32, patches_per_image=K).tokens for d in docs]
    out += [r.tokens for r in rows.laion_rows(docs, rng, TOK, seq_len=32, patches_per_image=K)]
    return np.stack(out)

  np.testing.assert_array_equal(run(3), run(3))
  assert not np.array_equal(run(3), run(4))


def test_too_short_rows_are_refused():
  with pytest.raises(ValueError, match="seq_len"):
    rows.mmc4_row(doc(["10"], [0]), np.random.default_rng(0), TOK, seq_len=5, patches_per_image=K)


# ---------------------------------------------------------------------------------------------------------------------
# LAION-Random


def pair(caption, name, doc_id):
  return dict(doc_id=doc_id, source="laion", texts=[caption], images=[name], image_text_index=[0],
              image_sim=[1.0], placement=0)


def test_laion_pairs_are_separate_segments_packed_until_full():
  docs = [pair("10 11", b"a", "p0"), pair("12", b"b", "p1"), pair("13 14 15", b"c", "p2")]
  out = list(rows.laion_rows(docs, FixedRng([BEFORE, AFTER, BEFORE]), TOK, seq_len=16, patches_per_image=K))
  assert len(out) == 2
  # Pair 0 (8 tokens) and pair 1 (7 tokens) share row 0; pair 2 (9 tokens) would not fit in the last slot.
  np.testing.assert_array_equal(out[0].tokens, [BOS, *SPAN, 10, 11, EOS, BOS, 12, *SPAN, EOS, PAD])
  np.testing.assert_array_equal(out[0].segment_ids, [1] * 8 + [2] * 7 + [0])
  np.testing.assert_array_equal(out[0].positions, list(range(8)) + list(range(7)) + [0])
  assert out[0].images == [b"a", b"b"] and out[0].doc_ids == ["p0", "p1"]
  np.testing.assert_array_equal(out[1].tokens, [BOS, *SPAN, 13, 14, 15, EOS] + [PAD] * 7)
  np.testing.assert_array_equal(out[1].segment_ids, [1] * 9 + [0] * 7)
  assert out[1].images == [b"c"]


def test_laion_long_caption_is_truncated_so_the_pair_fits():
  docs = [pair(" ".join(str(10 + i) for i in range(30)), b"a", "p0"), pair("40", b"b", "p1")]
  out = list(rows.laion_rows(docs, FixedRng([AFTER, BEFORE]), TOK, seq_len=10, patches_per_image=K))
  np.testing.assert_array_equal(out[0].tokens, [BOS, 10, 11, 12, 13, *SPAN, EOS])
  np.testing.assert_array_equal(out[1].tokens, [BOS, *SPAN, 40, EOS, PAD, PAD, PAD])
  assert [r.images for r in out] == [[b"a"], [b"b"]]


def test_laion_nothing_dropped_and_placement_is_balanced():
  data = np.random.default_rng(0)
  docs = [pair(" ".join(str(w) for w in data.integers(6, 99, size=data.integers(1, 9))), str(i).encode(), str(i))
          for i in range(2000)]
  out = list(rows.laion_rows(docs, np.random.default_rng(1), TOK, seq_len=40, patches_per_image=K))
  assert [im for r in out for im in r.images] == [d["images"][0] for d in docs]
  before = 0
  for r in out:
    check_layout(r, 40)
    spans_of(r)
    starts = np.flatnonzero(r.positions == 0)[:len(r.doc_ids)]
    before += int((r.tokens[starts + 1] == BOI).sum())
  assert abs(before - 1000) < 4 * np.sqrt(2000 * 0.25), before


def test_laion_max_images_starts_a_new_row_and_loses_nothing():
  docs = [pair("10", f"{i}".encode(), f"p{i}") for i in range(5)]
  out = list(rows.laion_rows(docs, FixedRng([BEFORE] * 5), TOK, seq_len=40, patches_per_image=K, max_images=2))
  # 5 pairs of 7 tokens would share one 40-token row; the cap makes rows of 2, 2, 1.
  assert [r.doc_ids for r in out] == [["p0", "p1"], ["p2", "p3"], ["p4"]]
  np.testing.assert_array_equal(out[0].tokens, [BOS, *SPAN, 10, EOS] * 2 + [PAD] * 26)
  np.testing.assert_array_equal(out[2].segment_ids, [1] * 7 + [0] * 33)

  data = np.random.default_rng(0)
  docs = [pair(" ".join(str(w) for w in data.integers(6, 99, size=data.integers(1, 9))), str(i).encode(), str(i))
          for i in range(500)]
  for cap in (1, 3, 100):
    out = list(rows.laion_rows(docs, np.random.default_rng(1), TOK, seq_len=40, patches_per_image=K, max_images=cap))
    assert [im for r in out for im in r.images] == [d["images"][0] for d in docs]  # every pair once, in order
    for r in out:
      check_layout(r, 40)
      assert spans_of(r) == len(r.doc_ids) <= cap
  # A cap the rows never reach changes nothing, draws included.
  assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(
      out, rows.laion_rows(docs, np.random.default_rng(1), TOK, seq_len=40, patches_per_image=K)))
  with pytest.raises(ValueError, match="max_images"):
    next(rows.laion_rows(docs, np.random.default_rng(1), TOK, seq_len=40, patches_per_image=K, max_images=0))


# ---------------------------------------------------------------------------------------------------------------------
# OBELICS


def test_obelics_exact_windows_with_span_carry_over():
  # Document a: <s> 10 11 SPAN(a0) 12 </s> = 9 tokens; b: <s> SPAN(b0) 20 21 22 23 24 SPAN(b1) </s> = 15 tokens.
  a = doc(["10 11", "12"], [1], images=[b"a0"], placement=1, doc_id="a")
  b = doc(["20 21 22 23 24"], [0, 1], images=[b"b0", b"b1"], placement=1, doc_id="b")
  out = list(rows.obelics_rows([a, b], np.random.default_rng(0), TOK, seq_len=11, patches_per_image=K))
  assert len(out) == 3
  # Window 0: all of a, then b's <s>; b's first span would straddle -> padded from there.
  np.testing.assert_array_equal(out[0].tokens, [BOS, 10, 11, *SPAN, 12, EOS, BOS, PAD])
  np.testing.assert_array_equal(out[0].segment_ids, [1] * 9 + [2, 0])
  np.testing.assert_array_equal(out[0].positions, list(range(9)) + [0, 0])
  assert out[0].images == [b"a0"] and out[0].doc_ids == ["a", "b"]
  # Window 1: b continues as a new segment (positions from 0); its second span does not fit in the last 2 slots.
  np.testing.assert_array_equal(out[1].tokens, [*SPAN, 20, 21, 22, 23, 24, PAD, PAD])
  np.testing.assert_array_equal(out[1].segment_ids, [1] * 9 + [0, 0])
  np.testing.assert_array_equal(out[1].positions, list(range(9)) + [0, 0])
  assert out[1].images == [b"b0"] and out[1].doc_ids == ["b"]
  # Window 2: the last span and </s>.
  np.testing.assert_array_equal(out[2].tokens, [*SPAN, EOS] + [PAD] * 6)
  np.testing.assert_array_equal(out[2].positions, [0, 1, 2, 3, 4] + [0] * 6)
  assert out[2].images == [b"b1"] and out[2].doc_ids == ["b"]


def test_obelics_window_filled_exactly_continues_as_new_segment():
  a = doc(["10 11 12 13 14 15 16"], [0], images=[b"a0"], placement=1, doc_id="a")  # 13 tokens
  out = list(rows.obelics_rows([a], np.random.default_rng(0), TOK, seq_len=8, patches_per_image=K))
  np.testing.assert_array_equal(out[0].tokens, [BOS, *SPAN, 10, 11, 12])
  np.testing.assert_array_equal(out[1].tokens, [13, 14, 15, 16, EOS, PAD, PAD, PAD])
  np.testing.assert_array_equal(out[1].segment_ids, [1] * 5 + [0] * 3)
  np.testing.assert_array_equal(out[1].positions, [0, 1, 2, 3, 4, 0, 0, 0])
  assert out[1].images == [] and out[1].doc_ids == ["a"]


def test_obelics_random_documents_lose_nothing_and_never_split_a_span():
  data = np.random.default_rng(3)
  docs, expected_text, expected_images = [], [], []
  for i in range(200):
    n_text = int(data.integers(1, 6))
    texts = [" ".join(str(w) for w in data.integers(6, 99, size=data.integers(0, 15))) for _ in range(n_text)]
    n_img = int(data.integers(0, 8))
    index = sorted(data.integers(0, n_text + 1, size=n_img).tolist())
    d = doc(texts, index, images=[f"{i}.{k}".encode() for k in range(n_img)], placement=1, doc_id=str(i))
    docs.append(d)
    if 1 <= n_img <= 6:
      expected_text += [BOS] + [int(w) for t in texts for w in t.split()] + [EOS]
      expected_images += d["images"]
  k = 4
  counts = {}
  out = list(rows.obelics_rows(docs, np.random.default_rng(0), TOK, seq_len=23, patches_per_image=k,
                               counts=counts))
  assert counts["no_image"] + counts.get("too_many_images", 0) == sum(
      1 for d in docs if not 1 <= len(d["images"]) <= 6)
  text, images = [], []
  for r in out:
    check_layout(r, 23)
    spans_of(r, k)
    text += [t for t in r.tokens[r.segment_ids > 0] if t not in (BOI, IMG, EOI)]
    images += r.images
  assert text == expected_text and images == expected_images
  # A window is padded only where the next span did not fit or at the very end.
  for r, nxt in zip(out, out[1:]):
    n = int((r.segment_ids > 0).sum())
    assert n == 23 or (nxt.tokens[0] == BOI and n + k + 2 > 23)


def test_obelics_random_placement_documents_are_drawn():
  d = doc(["10", "11"], [0], placement=0)
  first = [next(rows.obelics_rows([d], np.random.default_rng(s), TOK, seq_len=16, patches_per_image=K)).tokens[1]
           for s in range(50)]
  assert set(first) == {BOI, 10}


def test_obelics_max_row_images_moves_the_next_span_on_whole():
  # <s> SPAN(a0) 10 SPAN(a1) 11 SPAN(a2) 12 </s>: 18 tokens, one window of 20 without a cap.
  a = doc(["10", "11", "12"], [0, 1, 2], images=[b"a0", b"a1", b"a2"], placement=1, doc_id="a")
  out = list(rows.obelics_rows([a], np.random.default_rng(0), TOK, seq_len=20, patches_per_image=K,
                               max_row_images=2))
  # Text after the second span still fills window 0; the third span opens window 1, the document continuing there.
  np.testing.assert_array_equal(out[0].tokens, [BOS, *SPAN, 10, *SPAN, 11] + [PAD] * 9)
  np.testing.assert_array_equal(out[1].tokens, [*SPAN, 12, EOS] + [PAD] * 14)
  np.testing.assert_array_equal(out[1].positions, list(range(6)) + [0] * 14)
  assert [r.images for r in out] == [[b"a0", b"a1"], [b"a2"]] and [r.doc_ids for r in out] == [["a"], ["a"]]
  with pytest.raises(ValueError, match="max_row_images"):
    next(rows.obelics_rows([a], np.random.default_rng(0), TOK, seq_len=20, patches_per_image=K, max_row_images=0))


@pytest.mark.parametrize("cap", [1, 2, 4])
def test_obelics_capped_windows_lose_nothing_and_never_split_a_span(cap):
  data = np.random.default_rng(4)
  docs, expected_text, expected_images = [], [], []
  for i in range(150):
    n_text = int(data.integers(1, 6))
    texts = [" ".join(str(w) for w in data.integers(6, 99, size=data.integers(0, 10))) for _ in range(n_text)]
    n_img = int(data.integers(1, 7))  # documents with more images than the cap continue across windows
    index = sorted(data.integers(0, n_text + 1, size=n_img).tolist())
    docs.append(doc(texts, index, images=[f"{i}.{k}".encode() for k in range(n_img)], placement=1, doc_id=str(i)))
    expected_text += [BOS] + [int(w) for t in texts for w in t.split()] + [EOS]
    expected_images += docs[-1]["images"]
  k, seq_len = 2, 48
  out = list(rows.obelics_rows(docs, np.random.default_rng(0), TOK, seq_len=seq_len, patches_per_image=k,
                               max_row_images=cap))
  text, images = [], []
  for r in out:
    check_layout(r, seq_len)
    assert spans_of(r, k) <= cap
    text += [t for t in r.tokens[r.segment_ids > 0] if t not in (BOI, IMG, EOI)]
    images += r.images
  assert text == expected_text and images == expected_images  # every span once, in order, never split
  # A window is padded only where the next span did not fit, the window was full of images, or at the very end.
  for r, nxt in zip(out, out[1:]):
    n = int((r.segment_ids > 0).sum())
    assert n == seq_len or (nxt.tokens[0] == BOI and (n + k + 2 > seq_len or len(r.images) == cap))
