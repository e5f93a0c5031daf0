"""data_pipelines.tokenizer and the train_tokenizer CLI: special ids, round trips, determinism, raw-shard input."""
import io
import pathlib

from absl import flags
import pytest
import sentencepiece as spm

from configs.common import SPECIAL_TOKENS
from data_pipelines import train_tokenizer as cli
from data_pipelines.tokenizer import Tokenizer, train_tokenizer
from raw_data import mmc4_doc, write_jsonl, write_tar

_WORDS = ("cat dog owl fox horse mouse bird fish river mountain garden window kitchen morning evening yellow "
          "purple orange silver golden quickly slowly happily quietly loudly jumped walked painted wrote carried "
          "digit seven zero three eight handwritten strokes number picture photograph table chair pencil paper "
          "bright dark small large ancient modern village city market bridge harbour winter summer autumn spring "
          "because although whenever therefore meanwhile perhaps certainly tomorrow yesterday together").split()
# Deterministic pseudo-English: varied enough for a few hundred pieces.
CORPUS = [" ".join(_WORDS[(i * 7 + j * 13 + (i * j) % 5) % len(_WORDS)] for j in range(6 + i % 7)).capitalize() + "."
          for i in range(400)] + ["The cat sat on the mat.", "The dog sat on the roof."]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  return train_tokenizer(CORPUS, 150, str(tmp_path_factory.mktemp("tok") / "sub" / "tok.model"))


def test_special_ids_match_config(model_path):
  tok = Tokenizer(model_path)
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.boi_id, tok.eoi_id, tok.img_id) == tuple(
      SPECIAL_TOKENS[k] for k in ("pad", "bos", "eos", "boi", "eoi", "img"))
  assert tok.unk_id == 6
  assert tok.vocab_size == 150
  assert [tok.id_to_piece(i) for i in range(7)] == ["<pad>", "<s>", "</s>", "<boi>", "<eoi>", "<img>", "<unk>"]


def test_encode_never_emits_special_ids(model_path):
  tok = Tokenizer(model_path)
  ids = tok.encode("the cat <boi><img><eoi> </s> <s> <pad> sat on the mat")
  assert ids and min(ids) >= SPECIAL_TOKENS["unk"]  # never a control id; <unk> (id 6) for unseen characters


def test_round_trip(model_path):
  tok = Tokenizer(model_path)
  for text in ("The dog sat on the roof.", "Seven handwritten strokes quickly painted."):
    assert tok.decode(tok.encode(text)) == text
  assert tok.unk_id in tok.encode("a comma, never seen in training")  # unknown characters -> <unk>, not a special


def test_decode_specials(model_path):
  tok = Tokenizer(model_path)
  ids = [tok.bos_id] + tok.encode("the cat") + [tok.boi_id, tok.img_id, tok.img_id, tok.eoi_id, tok.eos_id]
  assert tok.decode(ids) == "the cat"
  assert tok.decode(ids, show_special=True) == "<s>the cat<boi><img><img><eoi></s>"


def test_training_is_deterministic(tmp_path):
  a = train_tokenizer(CORPUS, 100, str(tmp_path / "a.model"))
  b = train_tokenizer(iter(CORPUS), 100, str(tmp_path / "b.model"))
  assert pathlib.Path(a).read_bytes() == pathlib.Path(b).read_bytes()


def test_foreign_model_rejected(tmp_path):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=60,
                                 minloglevel=2)  # SentencePiece defaults: <unk>=0, <s>=1, </s>=2, no pad
  path = tmp_path / "foreign.model"
  path.write_bytes(model.getvalue())
  with pytest.raises(ValueError, match="special token pad"):
    Tokenizer(str(path))


def test_vocab_too_large_for_text_fails(tmp_path):
  with pytest.raises(RuntimeError, match="Vocabulary size"):
    train_tokenizer(["tiny text"], 5000, str(tmp_path / "x.model"))


def _run_cli(args):
  values = flags.FlagValues()
  cli._define_flags(values)  # pylint: disable=protected-access
  values(["train_tokenizer"] + args)
  return cli.run(values)


def test_cli_on_mmc4_text_without_images(tmp_path):
  docs = [mmc4_doc(CORPUS[i:i + 3], [(f"img{i}.jpg", 0, 0.3)]) for i in range(0, len(CORPUS), 3)]
  write_jsonl(tmp_path / "raw" / "docs_shard_0_v2.jsonl.zip", docs + [b"{broken"], zipped=True)
  # No image folder exists at all: text-only training must not need it.
  summary = _run_cli([f"--source=mmc4", f"--input={tmp_path / 'raw'}", "--vocab_size=100",
                      f"--output={tmp_path / 'mmc4.model'}"])
  assert summary["vocab_size"] == 100 and summary["skipped"] == {"broken_json": 1}
  assert Tokenizer(str(tmp_path / "mmc4.model")).encode("the cat sat")


def test_cli_on_laion_captions(tmp_path):
  members = []
  for i, text in enumerate(CORPUS):
    members += [(f"{i:09d}.jpg", b"not even an image"), (f"{i:09d}.txt", text.encode())]
  write_tar(tmp_path / "raw" / "00000.tar", members)
  summary = _run_cli(["--source=laion", f"--input={tmp_path / 'raw'}", "--vocab_size=100",
                      f"--output={tmp_path / 'laion.model'}"])
  assert summary["skipped"] == {}  # images are never decoded for text
  assert Tokenizer(summary["output"]).vocab_size == 100
