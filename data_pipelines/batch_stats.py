"""What a host batch holds, as floats for the metrics: rows, images, padding, tokens by kind. numpy only."""
import numpy as np


def batch_stats(batch: dict, special_tokens: dict) -> dict[str, float]:
  """rows / valid_images: real content; padding fractions: pad tokens of all tokens (empty rows included) and unused
  image slots of all slots; tokens/<kind>: counts of text, markers (<s> </s> <boi> <eoi>), <img> and <pad>.
  `special_tokens`: the tokenizer's role -> id."""
  tokens, segments, valid = batch["tokens"], batch["segment_ids"], batch["image_valid"]
  pad = segments == 0
  img = (tokens == special_tokens["img"]) & ~pad
  markers = np.isin(tokens, [special_tokens[k] for k in ("bos", "eos", "boi", "eoi")]) & ~pad
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
