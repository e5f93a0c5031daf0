"""Pictures a person would rather look at than numbers: prediction grids, confusion matrices, retrieval hits.

Every function returns uint8 [H, W, 3] (what the CLU writer and the PNG files take). matplotlib's object API with
the Agg canvas: no pyplot global state, safe inside a training process.
"""
import numpy as np

_OK, _WRONG = "#1a7f37", "#cf222e"


def _figure(width, height):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(fig)
  return fig


def _to_array(fig) -> np.ndarray:
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _frame(ax, color):
  ax.set_xticks([])
  ax.set_yticks([])
  for side in ax.spines.values():
    side.set_color(color)
    side.set_linewidth(3)


def prediction_grid(images, true_names, top_names, top_scores, cols: int = 4) -> np.ndarray:
  """Held-out images, each titled with its class and the top predictions (green frame: top-1 is right).

  images uint8 [G, H, W, 3]; true_names [G]; top_names / top_scores [G][k].
  """
  g = len(images)
  rows = -(-g // cols)
  fig = _figure(2.4 * cols, 2.9 * rows)
  for i in range(g):
    ax = fig.add_subplot(rows, cols, i + 1)
    ax.imshow(images[i], interpolation="nearest")
    right = top_names[i][0] == true_names[i]
    lines = [f"true: {true_names[i]}"] + [f"{n} {s:.2f}" for n, s in zip(top_names[i], top_scores[i])]
    ax.set_title("\n".join(lines), fontsize=7, color=_OK if right else _WRONG, loc="left")
    _frame(ax, _OK if right else _WRONG)
  fig.tight_layout()
  return _to_array(fig)


def confusion_matrix(counts: np.ndarray, class_names) -> np.ndarray:
  """counts [C, C] (rows: true class, columns: top-1 prediction), row-normalised for the colours. Names and
  counts are written when there are few enough classes to read them (<= 30)."""
  c = len(counts)
  rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  side = 3.0 + 0.35 * min(c, 30)
  fig = _figure(side + 1.0, side)
  ax = fig.add_subplot(1, 1, 1)
  shown = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
  fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
  ax.set_xlabel("predicted (top-1)")
  ax.set_ylabel("true")
  if c <= 30:
    ax.set_xticks(range(c), [str(n) for n in class_names], rotation=90, fontsize=7)
    ax.set_yticks(range(c), [str(n) for n in class_names], fontsize=7)
    for i in range(c):
      for j in range(c):
        if counts[i, j]:
          ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=6,
                  color="white" if rates[i, j] > 0.5 else "black")
  fig.tight_layout()
  return _to_array(fig)


def retrieval_hits(queries, hit_images, hit_correct, hit_scores) -> np.ndarray:
  """One row per text query: the query, then its top image hits (green frame: a matching image).

  queries [Q] str; hit_images uint8 [Q, k, H, W, 3]; hit_correct bool [Q, k]; hit_scores [Q, k].
  """
  q, k = len(queries), len(hit_images[0])
  fig = _figure(1.8 * (k + 2), 2.0 * q)
  grid = fig.add_gridspec(q, k + 2)
  for r in range(q):
    ax = fig.add_subplot(grid[r, :2])  # the query's text spans two image widths
    ax.axis("off")
    ax.text(0.0, 0.5, _wrap(queries[r], 36), fontsize=9, va="center", ha="left", transform=ax.transAxes)
    for j in range(k):
      ax = fig.add_subplot(grid[r, 2 + j])
      ax.imshow(hit_images[r][j], interpolation="nearest")
      color = _OK if hit_correct[r][j] else _WRONG
      ax.set_title(f"#{j + 1} {hit_scores[r][j]:.2f}", fontsize=7, color=color)
      _frame(ax, color)
  fig.tight_layout()
  return _to_array(fig)


def _wrap(text: str, width: int) -> str:
  words, lines, line = text.split(), [], ""
  for w in words:
    if line and len(line) + 1 + len(w) > width:
      lines.append(line)
      line = w
    else:
      line = f"{line} {w}".strip()
  lines.append(line)
  return "\n".join(lines[:6])
