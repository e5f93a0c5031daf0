"""OpenAI CLIP's byte-level BPE with LCL's three image tokens: the ids of the authors' tokenizer (OpenGVLab/LCL,
open_clip's SimpleTokenizer with additional_special_tokens from model_configs/LCL_ViT-B-16_laion.json).

Layout (vocab_size 49411):
  0..255        the 256 bytes as CLIP's stand-in characters, printable first   0 is "!", also LCL's padding id
  256..511      the same with the end-of-word mark "</w>"
  512..49405    the first 48894 merges of clip_bpe/bpe_simple_vocab_16e6.txt.gz, in file order
  49406 <start_of_text> (bos)  49407 <end_of_text> (eos)  49408 <img_placehold> (img)  49409 <start_of_img> (boi)
  49410 <end_of_img> (eoi)
Padding is id 0 as in the authors' rows (torch.zeros, then the sequence written over it): a row's padding is told by
segment id 0, never by the token. There is no <unk>: every byte has an id.

`encode` gives exactly the authors' `encode` (tests/test_clip_tokenizer.py against tests/fixtures/
clip_tokenizer_ids.json, written by tools/clip_tokenizer_fixture.py with their code), in three steps:
  1. cleaning, in Python: ftfy.fix_text, HTML unescaped twice, whitespace runs (str.split's notion) to one space,
     stripped, lower-cased (str.lower). Python, because no Rust normaliser repairs text as ftfy does, and Rust's
     lower-casing and whitespace tables are not Python's (str.split also splits at U+001C..U+001F).
  2. words: CLIP's pattern (contractions, letter runs, single digits, runs of anything else; whitespace dropped)
     with the `regex` module, case-insensitive as theirs is ("'ſ" is a contraction). Not the Rust Split
     pre-tokenizer: its Oniguruma tables predate Unicode 17 (tokenizers 0.23.3 against regex 2026.11.19: 17144
     letters and 336 digits are "other" to it, e.g. U+A7CE, CJK Extension J), and a letter it misses is cut from the
     letters beside it.
  3. bytes -> CLIP's characters and BPE with "</w>" on each word's last character: the Hugging Face `tokenizers`
     library (Rust), fed the words as pre-tokenised input.
One deliberate difference: the authors' pattern also matches the five special strings, so a document containing the
text "<start_of_img>" gets a real image marker (their MMC4 loader builds rows that way). Here text never yields
49406..49410: such text is tokenised as the ordinary characters it is, and only the row builder places markers.
"""
import gzip
import html
import os
from typing import Sequence

import ftfy
import regex
import tokenizers
from tokenizers import models, pre_tokenizers

from data_pipelines.errors import DataSetupError

VOCAB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_bpe", "bpe_simple_vocab_16e6.txt.gz")
# CLIP's 49408 ids are 512 byte pieces, these merges and <start_of_text>/<end_of_text>; the file holds more merges.
NUM_MERGES = 49152 - 256 - 2
SPECIAL_TOKENS = dict(pad=0, bos=49406, eos=49407, img=49408, boi=49409, eoi=49410)
SPECIAL_PIECES = {"bos": "<start_of_text>", "eos": "<end_of_text>", "img": "<img_placehold>",
                  "boi": "<start_of_img>", "eoi": "<end_of_img>"}  # pad has none: id 0 is the piece "!"
VOCAB_SIZE = 49411
END_OF_WORD = "</w>"
# CLIP's word pattern without the authors' special-string alternatives (the one deliberate difference above).
_WORD = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", regex.IGNORECASE)


def byte_characters() -> dict[int, str]:
  """Byte -> the character standing for it (GPT-2's table, which CLIP uses), in CLIP's id order: the printable
  Latin-1 bytes stand for themselves and come first, the other 68 (controls, space, soft hyphen...) follow as U+0100
  onwards, so no piece holds whitespace or a control character."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(others)}}


def clean(text: str) -> str:
  """The authors' 'lower' cleaning: what `encode` splits into words."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return " ".join(text.split()).lower()


class ClipTokenizer:
  """CLIP BPE as the LCL authors use it; the interface of data_pipelines.tokenizer.Tokenizer (see module docstring).

  Attributes: pad_id bos_id eos_id img_id boi_id eoi_id (SPECIAL_TOKENS), unk_id None, vocab_size 49411,
  path (the merges file), serialized_model (its bytes, gzip), special_tokens (role -> id).
  """
  kind, file_name = "clip_bpe", "bpe_simple_vocab_16e6.txt.gz"  # how exported artefacts store it (lcl_jax/export.py)

  def __init__(self, path: str = VOCAB_PATH):
    with open(path, "rb") as f:
      self.serialized_model = f.read()
    self.path = path
    lines = gzip.decompress(self.serialized_model).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
      raise DataSetupError(f"{path} is not CLIP's merges file: want a header line and {NUM_MERGES} merges of two "
                           f"pieces, found {len(merges)} lines.")
    byte_chars = byte_characters()
    base = list(byte_chars.values())
    self._pieces = base + [c + END_OF_WORD for c in base] + ["".join(m) for m in merges]
    vocab = {piece: i for i, piece in enumerate(self._pieces)}
    if len(vocab) != len(self._pieces):
      raise DataSetupError(f"{path}: merges repeat a piece, so ids would shift against CLIP's.")
    # The specials are not in the BPE vocabulary: the model cannot produce them.
    self._bpe = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix=END_OF_WORD))
    self._bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)  # bytes -> chars
    self._byte_of = {c: b for b, c in byte_chars.items()}
    self.pad_id = SPECIAL_TOKENS["pad"]
    self.bos_id = SPECIAL_TOKENS["bos"]
    self.eos_id = SPECIAL_TOKENS["eos"]
    self.img_id = SPECIAL_TOKENS["img"]
    self.boi_id = SPECIAL_TOKENS["boi"]
    self.eoi_id = SPECIAL_TOKENS["eoi"]
    self.special_tokens = dict(SPECIAL_TOKENS)  # role -> id, as the config's
    self.unk_id = None
    self.vocab_size = VOCAB_SIZE
    self._special_piece = {SPECIAL_TOKENS[name]: piece for name, piece in SPECIAL_PIECES.items()}

  def encode(self, text: str) -> list[int]:
    """Text -> ids, no bos/eos added (the row builder owns the sequence layout). Never returns 49406..49410."""
    words = _WORD.findall(clean(text))
    if not words:
      return []
    return self._bpe.encode(words, is_pretokenized=True).ids

  def decode(self, ids: Sequence[int], *, show_special: bool = False) -> str:
    """Ids -> text: each end of word written as one space, the last one dropped. Specials (49406..49410) are left
    out, or with show_special written as their pieces; id 0 is "!" (text cannot be told from padding by id)."""
    parts, run = [], []
    for i in (int(i) for i in ids):
      if i in self._special_piece:
        parts.append(self._text(run))
        if show_special:
          parts.append(self._special_piece[i])
        run = []
      else:
        run.append(i)
    parts.append(self._text(run))
    text = "".join(parts)
    return text[:-1] if text.endswith(" ") else text

  def _text(self, ids: list[int]) -> str:
    data = bytes(self._byte_of[c] for c in "".join(self.id_to_piece(i) for i in ids))
    return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")

  def id_to_piece(self, i: int) -> str:
    i = int(i)
    if i in self._special_piece:
      return self._special_piece[i]
    if not 0 <= i < len(self._pieces):
      raise IndexError(f"id {i} is outside CLIP BPE's {VOCAB_SIZE} ids")
    return self._pieces[i]
