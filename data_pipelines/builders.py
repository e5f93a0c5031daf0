"""TFDS dataset builders `lcl_mmc4`, `lcl_obelics`, `lcl_laion`: raw shards -> sharded TFRecord documents.

Importing this module registers the three names, so training reads with `tfds.builder("lcl_mmc4", data_dir=DIR)`
(data_pipelines.build.load_documents does that). Building needs the raw input, given to the constructor
(`input_dir=...`); nothing is ever downloaded: the generator reads the user's files through data_pipelines.readers.

Features mirror the reader schema (readers/schema.py) one to one. Images stay encoded bytes (PNG/JPEG from
validate_image), not `tfds.features.Image`: a document holds a variable number of differently sized images, which
tfds cannot decode into one dense tensor, and decoding belongs after row building, where the rows pick images.

Files are TFRecord by default: `as_dataset(..., shuffle_files=True, read_config=ReadConfig(input_context=...))` shards
them by file across hosts. `file_format="array_record"` (build.py --file_format) writes ArrayRecord instead, which
adds random access (`builder.as_data_source(split)`): the training pipeline (data_pipelines/pipeline.py) needs it for
corpora too large to hold in memory. The writer orders examples by a hash of doc_id (deterministic, and it mixes
shards and sources within a file). A split's generator records its skip counts and kept totals (`split_counters`,
`split_kept`) for the build report (data_pipelines/build.py).
"""
import hashlib
import inspect

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.bad_input import BadInputCounter
from data_pipelines.readers import SOURCES, read_documents

VERSION = "1.0.0"
TRAIN, HOLDOUT = "train", "validation"


def dataset_name(source: str) -> str:
  if source not in SOURCES:
    raise ValueError(f"Unknown source {source!r}; expected one of {SOURCES}.")
  return f"lcl_{source}"


def features() -> tfds.features.FeaturesDict:
  """The TFDS feature spec; python-side schema in readers/schema.py."""
  return tfds.features.FeaturesDict({
      "doc_id": tfds.features.Text(),
      "source": tfds.features.Text(),
      "texts": tfds.features.Sequence(tfds.features.Text()),
      "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),  # encoded PNG/JPEG
      "image_text_index": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.int32)),
      "image_sim": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.float32)),
      "placement": tfds.features.Tensor(shape=(), dtype=np.int32),
  })


def in_holdout(doc_id: str, fraction: float) -> bool:
  """Deterministic split by a hash of doc_id: stable across builds, machines and worker counts."""
  if fraction <= 0:
    return False
  value = int.from_bytes(hashlib.sha1(doc_id.encode("utf-8")).digest()[:8], "big") / 2.0**64
  return value < fraction


class _LclBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared by the three sources; subclasses only set SOURCE (and through it the registered name)."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): "Unified interleaved documents from the raw shards (readers/schema.py)."}
  SOURCE = ""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds 4.9.10 resolves this through `importlib_resources`, which it only declares for Python < 3.9 and so is
    # missing on a fresh install; the defining module's file is the answer tfds itself falls back to.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, input_dir: str | None = None, images_dir: str | None = None, mapping: str | None = None,
               holdout_fraction: float = 0.0, num_workers: int = 1, image_options: dict | None = None, **kwargs):
    """input_dir etc. are only needed to build; reading a built dataset needs data_dir alone."""
    if input_dir is not None:  # building: TFRecord unless asked (explicit, as tfds's own default may change)
      kwargs.setdefault("file_format", "tfrecord")
    # Reading: no file_format, so tfds takes the one recorded on disk (passing a different one raises).
    super().__init__(**kwargs)
    self.input_dir = input_dir
    self.images_dir = images_dir
    self.mapping = mapping
    self.holdout_fraction = holdout_fraction
    self.num_workers = num_workers
    self.image_options = dict(image_options or {})
    self.split_counters: dict[str, BadInputCounter] = {}  # split -> skips, filled while generating
    self.split_kept: dict[str, dict[str, int]] = {}       # split -> documents/images/bytes written

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"{self.SOURCE} documents in the lcl_jax schema: text pieces, validated RGB image bytes, "
                     "image-to-text links and similarities, placement mode."),
        features=features(),
        homepage="https://github.com/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the user's raw shards are the input
    if not self.input_dir:
      raise ValueError(f"Building {self.name} needs input_dir (the raw {self.SOURCE} shards).")
    splits = {TRAIN: self._generate_examples(TRAIN)}
    if self.holdout_fraction > 0:
      splits[HOLDOUT] = self._generate_examples(HOLDOUT)
    return splits

  def _generate_examples(self, split: str):
    counter = self.split_counters[split] = BadInputCounter()
    holdout, fraction = split == HOLDOUT, self.holdout_fraction
    documents = read_documents(
        self.SOURCE, self.input_dir, counter, images_dir=self.images_dir, mapping=self.mapping,
        select=lambda doc_id: in_holdout(doc_id, fraction) == holdout,
        num_workers=self.num_workers, image_options=self.image_options)
    kept = self.split_kept[split] = dict(documents=0, images=0, image_bytes=0, text_bytes=0)
    for document in documents:
      kept["documents"] += 1
      kept["images"] += len(document["images"])
      kept["image_bytes"] += sum(len(b) for b in document["images"])
      kept["text_bytes"] += sum(len(t.encode("utf-8")) for t in document["texts"])
      yield document["doc_id"], document


class LclMmc4(_LclBuilder):
  """MMC4 documents (readers/mmc4.py)."""
  name = "lcl_mmc4"
  SOURCE = "mmc4"


class LclObelics(_LclBuilder):
  """OBELICS documents (readers/obelics.py)."""
  name = "lcl_obelics"
  SOURCE = "obelics"


class LclLaion(_LclBuilder):
  """LAION pairs (readers/laion.py)."""
  name = "lcl_laion"
  SOURCE = "laion"


BUILDERS = {cls.SOURCE: cls for cls in (LclMmc4, LclObelics, LclLaion)}
