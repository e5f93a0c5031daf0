"""Synthetic batches that follow the batch contract (docs/method.md section 6), and NumPy loss references."""
import numpy as np

from configs import common
from data_pipelines import batch_spec

ST = common.SPECIAL_TOKENS
FIRST_TEXT = max(ST.values()) + 1


def make_batch(rng, *, num_chunks, rows_per_chunk, images_per_chunk, seq_len, patches, image_size,
               vocab_size, image_first_prob=0.3):
  """Random interleaved rows; each chunk holds at most `images_per_chunk` image spans.

  Returns (batch, owner) where owner[i] = (row, span start) of image slot i, or None for a padded slot.
  """
  span = patches + 2
  n = num_chunks * images_per_chunk
  batch = batch_spec.zeros(batch_spec.shapes(rows=num_chunks * rows_per_chunk, images=n, seq_len=seq_len,
                                             image_size=image_size))
  owner = []
  for c in range(num_chunks):
    chunk_owner = []
    for r in range(rows_per_chunk):
      row_index = c * rows_per_chunk + r
      tok, seg, pos = (batch[k][row_index] for k in ("tokens", "segment_ids", "positions"))
      i, segment = 0, 0
      while i < seq_len - 4:
        segment += 1
        start = i
        tok[i] = ST["bos"]; i += 1
        for _ in range(rng.integers(1, 4)):
          if i >= seq_len - 2:
            break
          put_image = rng.random() < 0.5 and len(chunk_owner) < images_per_chunk
          if put_image and (i == start + 1 and rng.random() < image_first_prob or i > start + 1):
            if i + span < seq_len - 1:
              tok[i] = ST["boi"]; tok[i + 1:i + 1 + patches] = ST["img"]; tok[i + 1 + patches] = ST["eoi"]
              chunk_owner.append((row_index, i)); i += span
          n_text = int(rng.integers(1, 6))
          n_text = min(n_text, seq_len - 1 - i)
          tok[i:i + n_text] = rng.integers(FIRST_TEXT, vocab_size, n_text); i += n_text
        if i < seq_len:
          tok[i] = ST["eos"]; i += 1
        seg[start:i] = segment
        pos[start:i] = np.arange(i - start)
        if rng.random() < 0.3:
          break  # leave padding at the end of some rows
    owner += chunk_owner + [None] * (images_per_chunk - len(chunk_owner))
  batch["images"][:] = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
  batch["image_valid"][:] = [o is not None for o in owner]
  batch["images"][~batch["image_valid"]] = 0
  return batch, owner


def np_contrastive(v, t, valid, logit_scale):
  """Dense global reference: masked bidirectional InfoNCE, mean over valid anchors."""
  v = v / np.linalg.norm(v, axis=-1, keepdims=True)
  t = t / np.linalg.norm(t, axis=-1, keepdims=True)
  s = np.exp(logit_scale)
  idx = np.flatnonzero(valid)
  if idx.size == 0:
    return 0.0
  vv, tt = v[idx].astype(np.float64), t[idx].astype(np.float64)

  def ce(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.diag(logp)

  return float(np.mean(0.5 * (ce(s * vv @ tt.T) + ce(s * tt @ vv.T))))


def np_next_token(logits, tokens, segment_ids):
  """Reference next-token loss with the target rules of docs/method.md section 4, by explicit loops."""
  total, count = 0.0, 0
  b, length, _ = logits.shape
  for r in range(b):
    for i in range(length - 1):
      target = tokens[r, i + 1]
      if segment_ids[r, i + 1] == 0 or segment_ids[r, i + 1] != segment_ids[r, i]:
        continue
      if not (target >= FIRST_TEXT or target in (ST["boi"], ST["eos"])):
        continue
      row = logits[r, i].astype(np.float64)
      m = row.max()
      total += -(row[target] - m - np.log(np.exp(row - m).sum()))
      count += 1
  return total / max(count, 1), count
