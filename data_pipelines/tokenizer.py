"""SentencePiece with LCL's special ids reserved at the front (docs/method.md section 1, SPECIAL_TOKENS).

Layout of every model trained here:
  0 <pad>   1 <s>   2 </s>   3 <boi>   4 <eoi>   5 <img>   6 <unk>   7.. learned pieces
All six specials are SentencePiece *control* symbols, so `encode` never produces them from text: a document that
literally contains "<boi>" is tokenised as ordinary characters, and only the row builder places real image spans.

`load_tokenizer(spec)` is what config.data.tokenizer names: a SentencePiece model path, or "clip_bpe" for OpenAI
CLIP's BPE with the LCL authors' ids (data_pipelines/clip_tokenizer.py, its own layout of special ids).
"""
import io
from typing import Iterable, Sequence

import sentencepiece as spm

from data_pipelines import storage
from data_pipelines.errors import DataSetupError

# Special token ids reserved at the front of every SentencePiece model trained here (docs/method.md section 1): six
# control pieces, then <unk>. configs import them from here; the CLIP BPE layout is data_pipelines.clip_tokenizer's.
# <boi> and </s> are generation targets by rule.
SPECIAL_TOKENS = dict(pad=0, bos=1, eos=2, boi=3, eoi=4, img=5, unk=6)

SPECIAL_PIECES = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "boi": "<boi>", "eoi": "<eoi>", "img": "<img>"}
UNK_PIECE = "<unk>"
UNK_ID = SPECIAL_TOKENS["unk"]  # right after the control pieces
_SEED = 0
# Web paragraphs are long; SentencePiece silently skips lines longer than this many bytes.
_MAX_SENTENCE_BYTES = 1 << 14
# config.data.tokenizer naming the bundled CLIP BPE rather than a file (a file of that name needs a path: ./clip_bpe).
CLIP_BPE = "clip_bpe"


class Tokenizer:
  """A trained SentencePiece model whose special ids match SPECIAL_TOKENS.

  Raises ValueError on load if they do not, so a model trained elsewhere cannot silently shift every image token.
  """
  kind, file_name = "sentencepiece", "tokenizer.model"  # how exported artefacts store it (lcl_jax/export.py)

  def __init__(self, path: str):
    with storage.open_file(path, "rb") as f:
      self.serialized_model = f.read()  # also what tf_text.SentencepieceTokenizer takes, for in-graph use
    self._sp = spm.SentencePieceProcessor(model_proto=self.serialized_model)
    self.path = path
    for name, piece in SPECIAL_PIECES.items():
      want = SPECIAL_TOKENS[name]
      got = self._sp.piece_to_id(piece)
      if self._sp.id_to_piece(want) != piece or got != want or not self._sp.is_control(want):
        raise DataSetupError(
            f"Tokenizer {path}: special token {name} must be control piece {piece!r} at id {want} "
            f"(SPECIAL_TOKENS), but id {want} is {self._sp.id_to_piece(want)!r} and the piece has "
            f"id {got}. Train it with data_pipelines.train_tokenizer.")
    if self._sp.unk_id() != UNK_ID:
      raise DataSetupError(f"Tokenizer {path}: <unk> has id {self._sp.unk_id()}, but lcl_jax reserves id {UNK_ID} "
                           "for it (neither a generation target nor contrastive context). Train it with "
                           "data_pipelines.train_tokenizer.")
    self.pad_id = SPECIAL_TOKENS["pad"]
    self.bos_id = SPECIAL_TOKENS["bos"]
    self.eos_id = SPECIAL_TOKENS["eos"]
    self.boi_id = SPECIAL_TOKENS["boi"]
    self.eoi_id = SPECIAL_TOKENS["eoi"]
    self.img_id = SPECIAL_TOKENS["img"]
    self.special_tokens = {name: SPECIAL_TOKENS[name] for name in SPECIAL_PIECES}  # role -> id, as the config's
    self.unk_id = self._sp.unk_id()
    self.vocab_size = self._sp.get_piece_size()
    self._special_ids = frozenset(SPECIAL_TOKENS[name] for name in SPECIAL_PIECES)  # decode keeps <unk>

  def encode(self, text: str) -> list[int]:
    """Text -> piece ids, no <s>/</s> added (the row builder owns the sequence layout). Never returns ids 0-5."""
    return self._sp.encode(text, out_type=int)

  def decode(self, ids: Sequence[int], *, show_special: bool = False) -> str:
    """Ids -> text. Special ids are dropped, or with show_special written as their pieces (for reading rows)."""
    ids = [int(i) for i in ids]
    if not show_special:
      return self._sp.decode([i for i in ids if i not in self._special_ids])
    parts, run = [], []
    for i in ids:
      if i in self._special_ids:
        parts.append(self._sp.decode(run))
        parts.append(self._sp.id_to_piece(i))
        run = []
      else:
        run.append(i)
    parts.append(self._sp.decode(run))
    return "".join(parts)

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))


def load_tokenizer(spec: str):
  """config.data.tokenizer, "demo" already resolved to its path -> the tokenizer: "clip_bpe" gives
  data_pipelines.clip_tokenizer.ClipTokenizer, anything else is a SentencePiece model path (local or gs://)."""
  if spec == CLIP_BPE:
    from data_pipelines.clip_tokenizer import ClipTokenizer  # pylint: disable=import-outside-toplevel
    return ClipTokenizer()
  return Tokenizer(spec)


def _lines(texts: Iterable[str]) -> Iterable[str]:
  """One SentencePiece 'sentence' per non-empty line; documents and paragraphs carry newlines."""
  for text in texts:
    for line in text.splitlines():
      if line.strip():
        yield line


def train_tokenizer(texts: Iterable[str], vocab_size: int, output_path: str, *, model_type: str = "unigram",
                    character_coverage: float = 0.9995) -> str:
  """Trains a SentencePiece model on `texts` and writes it to `output_path` (local or gs://). Returns the path.

  Deterministic: the same texts give a byte-identical model file (one thread, no sentence sampling or shuffling,
  fixed seed). Every text is used; cap the input upstream for very large corpora. Raises if `vocab_size` is larger
  than the text supports (SentencePiece's hard limit), so a config's vocab_size is never silently not met.
  """
  model = io.BytesIO()
  spm.set_random_generator_seed(_SEED)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_lines(texts)),
      model_writer=model,
      vocab_size=vocab_size,
      model_type=model_type,
      character_coverage=character_coverage,
      pad_id=SPECIAL_TOKENS["pad"], pad_piece=SPECIAL_PIECES["pad"],
      bos_id=SPECIAL_TOKENS["bos"], bos_piece=SPECIAL_PIECES["bos"],
      eos_id=SPECIAL_TOKENS["eos"], eos_piece=SPECIAL_PIECES["eos"],
      unk_id=UNK_ID, unk_piece=UNK_PIECE,
      # Unassigned ids (3, 4, 5) are filled by control symbols in this order.
      control_symbols=[SPECIAL_PIECES["boi"], SPECIAL_PIECES["eoi"], SPECIAL_PIECES["img"]],
      num_threads=1,
      input_sentence_size=0,
      shuffle_input_sentence=False,
      max_sentence_length=_MAX_SENTENCE_BYTES,
      minloglevel=2,
  )
  parent = output_path.rsplit("/", 1)[0] if "/" in output_path else ""
  if parent:
    storage.makedirs(parent)
  with storage.open_file(output_path, "wb") as f:
    f.write(model.getvalue())
  Tokenizer(output_path)  # fail here, not at training time, if the layout is ever wrong
  return output_path
