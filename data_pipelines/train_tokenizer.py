"""Trains the SentencePiece tokenizer on the text of raw MMC4, OBELICS or LAION shards (images are never opened).

  python -m data_pipelines.train_tokenizer --source=mmc4 --input=RAW_DIR --vocab_size=32000 --output=PATH.model

The model reserves LCL's special ids (data_pipelines/tokenizer.py); configs name the output file. The same input
gives a byte-identical model. --max_texts caps the text pieces used (the first ones, in reading order), since
SentencePiece holds its whole input in memory.
"""
import itertools
import json

from absl import app
from absl import flags
from absl import logging

from data_pipelines.bad_input import BadInputCounter
from data_pipelines.readers import SOURCES, read_texts
from data_pipelines.tokenizer import Tokenizer, train_tokenizer


def train_from_source(source: str, input_dir: str, vocab_size: int, output: str, *,
                      max_texts: int | None = None) -> tuple[str, dict]:
  """Trains on the text pieces of one source; returns (output path, skip counts of the text pass)."""
  counter = BadInputCounter()
  texts = read_texts(source, input_dir, counter)
  if max_texts:
    texts = itertools.islice(texts, max_texts)
  path = train_tokenizer(texts, vocab_size, output)
  return path, counter.counts()


def _define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """CLI flags, defined only when run as a script: importing this module must not claim flag names."""
  define = dict(flag_values=flag_values)
  flags.DEFINE_enum("source", None, list(SOURCES), "Raw format of --input.", **define)
  flags.DEFINE_string("input", None, "Folder of raw shards (local or gs://).", **define)
  flags.DEFINE_integer("vocab_size", None, "Vocabulary size, special ids included.", **define)
  flags.DEFINE_string("output", None, "Where to write the .model file (local or gs://).", **define)
  flags.DEFINE_integer("max_texts", None, "Use at most this many text pieces (default: all).", **define)
  flags.mark_flags_as_required(["source", "input", "vocab_size", "output"], **define)


def run(f: flags.FlagValues) -> dict:
  """The CLI on parsed flags (tests call it with their own FlagValues): trains, prints and returns a summary."""
  path, skipped = train_from_source(f.source, f.input, f.vocab_size, f.output, max_texts=f.max_texts)
  summary = {"output": path, "vocab_size": Tokenizer(path).vocab_size, "skipped": skipped}
  logging.info("Tokenizer trained: %s", json.dumps(summary, sort_keys=True))
  print(json.dumps(summary, sort_keys=True))
  return summary


def main(argv):
  del argv
  run(flags.FLAGS)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
