"""What a host batch holds, as floats for the metrics: rows, images, padding, tokens by kind. numpy only."""
import numpy as np

from configs.common import SPECIAL_TOKENS

_MARKERS = tuple(SPECIAL_TOKENS[k] for k in ("bos", "eos", "boi", "eoi"))


def batch_stats(batch: dict) -> dict[str, float]:
  """rows / valid_images: real content; padding fractions: pad tokens of all tokens (empty rows included) and unused
  image slots of all slots; tokens/<kind>: counts of text, markers (<s> </s> <boi> <eoi>), <img> and <pad>."""
  tokens, segments, valid = batch["tokens"], batch["segment_ids"], batch["image_valid"]
  pad = segments == 0
  img = (tokens == SPECIAL_TOKENS["img"]) & ~pad
  markers = np.isin(tokens, _MARKERS) & ~pad
  text = ~pad & ~img & ~markers
  return {
      "rows": float((segments > 0).any(axis=1).sum()),
      "valid_images": float(valid.sum()),
      "padding_fraction/rows": float(pad.mean()) if pad.size else 0.0,
      "padding_fraction/image_slots": float(1.0 - valid.mean()) if valid.size else 0.0,
      "tokens/text": float(text.sum()),
      "tokens/markers": float(markers.sum()),
      "tokens/img": float(img.sum()),
      "tokens/pad": float(pad.sum()),
  }
