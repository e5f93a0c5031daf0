"""See what the model is fed: batch statistics, one row in text, and a picture of one packed row.

  python -m tools.inspect_batches --config=configs/vitb16_mmc4.py:runlocal --num_batches=4 [--output=row.png]

Prints each batch's metrics (pipeline.py) and their means, the densest row of the first batch as text (special
tokens shown, <img> runs collapsed), and writes a PNG of that row: one cell per token coloured by kind (text,
markers, <img>, padding), segment boundaries, and each image span covered by its image as the ViT receives it.
`--num_chunks` splits the batch as training would (default 1); the pipeline's flags are config overrides as usual
(e.g. --config.data.seq_len=2048; the decoder's max_len follows seq_len here).
"""
import collections
import os

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from data_pipelines import pipeline

KIND_COLOURS = {"text": "#4C72B0", "markers": "#DD8452", "img": "#55A868", "pad": "#E5E5E5"}
_LINE = 64  # token cells per line of the picture


def token_kinds(tokens, segment_ids, special_tokens) -> np.ndarray:
  """str [L]: text / markers / img / pad, as batch_stats counts them (special_tokens: the tokenizer's)."""
  kinds = np.full(len(tokens), "text", dtype=object)
  kinds[np.isin(tokens, [special_tokens[k] for k in ("bos", "eos", "boi", "eoi")])] = "markers"
  kinds[tokens == special_tokens["img"]] = "img"
  kinds[segment_ids == 0] = "pad"
  return kinds


def row_text(tokenizer, tokens, segment_ids) -> str:
  """The row with special pieces shown, <img> runs collapsed and segments on their own lines."""
  out, i, n = [], 0, int((segment_ids > 0).sum())
  img = tokenizer.img_id
  while i < n:
    if i and segment_ids[i] != segment_ids[i - 1]:
      out.append("\n")
    j = i
    if tokens[i] == img:
      while j < n and tokens[j] == img:
        j += 1
      out.append(f"<img>x{j - i}")
    else:
      while j < n and tokens[j] != img and segment_ids[j] == segment_ids[i]:
        j += 1
      out.append(tokenizer.decode(tokens[i:j], show_special=True))
    i = j
  return "".join(out) + f"\n<pad>x{len(tokens) - n}"


def draw_row(path, tokens, segment_ids, images, special_tokens, title=""):
  """PNG of one row: token cells coloured by kind with segment boundaries (thick lines) and each span's number at
  its <boi>; below, the span images as the ViT receives them, labelled with their number and token range."""
  import matplotlib  # pylint: disable=import-outside-toplevel  # only the picture needs it
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib.patches import Patch, Rectangle  # pylint: disable=import-outside-toplevel

  kinds = token_kinds(tokens, segment_ids, special_tokens)
  lines = -(-len(tokens) // _LINE)
  starts = np.flatnonzero(tokens == special_tokens["boi"])
  per_line = 16  # thumbnails per line of the strip
  strip_lines = -(-len(starts) // per_line)
  fig = plt.figure(figsize=(14, 0.25 * lines + 1.1 * strip_lines + 1.2))
  grid = fig.add_gridspec(2, 1, height_ratios=[0.25 * lines + 0.6, 1.1 * max(strip_lines, 1)], hspace=0.25)
  ax = fig.add_subplot(grid[0])
  for i, kind in enumerate(kinds):
    ax.add_patch(Rectangle((i % _LINE, i // _LINE), 1, 1, facecolor=KIND_COLOURS[kind], edgecolor="white", lw=0.3))
    if i and segment_ids[i] != segment_ids[i - 1]:
      ax.plot([i % _LINE, i % _LINE], [i // _LINE, i // _LINE + 1], color="black", lw=2)
  for j, start in enumerate(starts):
    ax.text(start % _LINE + 0.5, start // _LINE + 0.5, str(j), ha="center", va="center", fontsize=6)
  ax.set_xlim(0, _LINE)
  ax.set_ylim(lines, 0)
  ax.set_aspect("equal")
  ax.set_xticks([])
  ax.set_yticks(np.arange(lines) + 0.5, [str(k * _LINE) for k in range(lines)], fontsize=6)
  ax.legend(handles=[Patch(color=c, label=k) for k, c in KIND_COLOURS.items()], ncol=4, fontsize=7,
            loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False)
  ax.set_title(title, fontsize=9)
  strip = grid[1].subgridspec(max(strip_lines, 1), per_line, wspace=0.1, hspace=0.35)
  for j, start in enumerate(starts):
    thumb = fig.add_subplot(strip[j // per_line, j % per_line])
    thumb.imshow(images[j], interpolation="nearest")
    end = start + 1 + int((tokens[start + 1:] == special_tokens["img"]).argmin())
    thumb.set_title(f"{j}: {start}-{end}", fontsize=6)
    thumb.axis("off")
  fig.savefig(path, dpi=150, bbox_inches="tight")
  plt.close(fig)


def run(config, *, num_batches: int, num_chunks: int = 1, output: str = "") -> dict:
  """Reads num_batches batches, prints their statistics, draws one row; returns the mean metrics."""
  config.model.decoder.max_len = max(config.model.decoder.max_len, config.data.seq_len)
  data = pipeline.Pipeline(config, num_chunks=num_chunks)
  sums, first = collections.Counter(), None
  try:
    for k in range(num_batches):
      batch, metrics, info = data.next_with_info()
      first = first or (batch, info)
      sums.update(metrics)
      print(f"batch {k}: " + ", ".join(f"{name}={value:g}" for name, value in sorted(metrics.items())))
  finally:
    data.close()
  means = {name: value / num_batches for name, value in sums.items()}
  print("mean over batches:")
  for name, value in sorted(means.items()):
    print(f"  {name:44s} {value:12.4f}")

  batch, info = first
  spans = (batch["tokens"] == data.tokenizer.boi_id).sum(axis=1)
  row = int(np.argmax(spans * 10_000 + (batch["segment_ids"] > 0).sum(axis=1)))  # most images, then fullest
  per_chunk_rows = len(batch["tokens"]) // num_chunks
  chunk = row // per_chunk_rows
  slot = chunk * (len(batch["images"]) // num_chunks) + int(spans[chunk * per_chunk_rows:row].sum())
  images = batch["images"][slot:slot + spans[row]]
  where = info[row] or {}
  print(f"\nrow {row} ({where.get('source')}, documents {where.get('doc_ids')}):")
  print(row_text(data.tokenizer, batch["tokens"][row], batch["segment_ids"][row]))
  if output:
    title = (f"row {row} of batch 0: {where.get('source')}, {len(images)} images, "
             f"{int((batch['segment_ids'][row] > 0).sum())}/{len(batch['tokens'][row])} tokens used")
    draw_row(output, batch["tokens"][row], batch["segment_ids"][row], images, data.tokenizer.special_tokens, title)
    print(f"wrote {os.path.abspath(output)}")
  return means


def main(argv):
  del argv
  run(_CONFIG.value, num_batches=_NUM_BATCHES.value, num_chunks=_NUM_CHUNKS.value, output=_OUTPUT.value)


if __name__ == "__main__":
  # Flags exist only when this module runs as the program: importing it must not claim flag names.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, path[:arg].", lock_config=True)
  _NUM_BATCHES = flags.DEFINE_integer("num_batches", 4, "Batches to read.")
  _NUM_CHUNKS = flags.DEFINE_integer("num_chunks", 1, "Chunks per batch (data shards x micro-batches).")
  _OUTPUT = flags.DEFINE_string("output", "packed_row.png", "PNG of one packed row ('' for none).")
  flags.mark_flags_as_required(["config"])
  app.run(main)
