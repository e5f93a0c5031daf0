"""The one document schema every reader yields and the TFDS features mirror (the row builder's contract).

  doc_id            str          stable and unique within a source: "<shard file>:<line or row>" (MMC4, OBELICS),
                                 "<shard file>:<sample key>" (LAION)
  source            str          "mmc4" | "obelics" | "laion"
  texts             list[str]    text pieces in document order (MMC4 sentences, OBELICS texts, LAION [caption])
  images            list[bytes]  validated, re-encoded RGB PNG/JPEG (data_pipelines.images.validate_image output)
  image_text_index  list[int]    per image. MMC4/LAION: index into texts of its matched sentence. OBELICS: index of
                                 the text piece the image immediately precedes (len(texts) = after the last text)
  image_sim         list[float]  per image: MMC4 matched_sim; 1.0 where the source has none
  placement         int          PLACEMENT_RANDOM: before/after its matched text, drawn anew at row time (MMC4,
                                 LAION); PLACEMENT_FIXED: exactly where the source put it (OBELICS)
"""
import math

PLACEMENT_RANDOM = 0
PLACEMENT_FIXED = 1
FIELDS = ("doc_id", "source", "texts", "images", "image_text_index", "image_sim", "placement")


def make_document(*, doc_id: str, source: str, texts: list[str], images: list[bytes],
                  image_text_index: list[int], image_sim: list[float], placement: int) -> dict:
  """Builds a document dict, checking the invariants the row builder relies on."""
  if not len(images) == len(image_text_index) == len(image_sim):
    raise ValueError(f"{doc_id}: per-image lists differ in length.")
  limit = len(texts) if placement == PLACEMENT_FIXED else len(texts) - 1
  if any(not 0 <= i <= limit for i in image_text_index):
    raise ValueError(f"{doc_id}: image_text_index {image_text_index} out of range for {len(texts)} texts.")
  return dict(doc_id=doc_id, source=source, texts=list(texts), images=list(images),
              image_text_index=[int(i) for i in image_text_index], image_sim=[float(s) for s in image_sim],
              placement=int(placement))


def is_clean_text(text) -> bool:
  """A str that encodes to UTF-8. JSON escapes such as "\\ud800" decode to lone surrogates that do not."""
  if not isinstance(text, str):
    return False
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def is_blank(texts: list[str]) -> bool:
  """True when no piece has visible text (a document with nothing to read)."""
  return not any(t.strip() for t in texts)


def finite_float(value, default: float) -> float:
  """`value` as a float if it is a finite real number (bools excluded), else `default`."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    return default
  return float(value)
