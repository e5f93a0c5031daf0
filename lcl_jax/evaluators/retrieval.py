"""Zero-shot image-text retrieval on a paired set: recall@1/5/10 both ways (docs/method.md section 7).

Captions are encoded as `<s> caption <boi>` (t at that `<boi>`), images by their pooled v; both L2-normalised and
ranked by cosine similarity. An image may carry several captions (COCO: about 5). Identical caption texts are one
text query that matches every image carrying it (on COCO this almost never happens; on the demo digits, where many
images share a caption like "a handwritten four in red ink", it is the only fair reading).
text->image: a query hits at k when one of its images is in its top k. image->text: an image hits at k when one of
its captions is in its top k; images without captions are no image->text queries (they stay text->image candidates).
Scalars: t2i_r{1,5,10}, i2t_r{1,5,10}, num_images, num_texts. Picture: a few text queries with their top images.
"""
import numpy as np

from lcl_jax.evaluators import base, features, pictures

RECALL_AT = (1, 5, 10)
_THUMB = 64  # pictures keep every image at about this side, not the full set at model resolution


def recall(hits_ranked: np.ndarray) -> dict:
  """bool [Q, k] (does the i-th best answer match) -> {k: fraction of queries with a match in the top k}."""
  return {k: float(hits_ranked[:, :k].any(axis=1).mean()) for k in RECALL_AT}


class Retrieval(base.Evaluator):
  DEFAULTS = dict(
      text_len=64,          # caption row length in tokens, `<s>` and `<boi>` included
      queries_shown=4,      # text queries drawn with their best images (the set's first captions)
      hits_shown=5,
  )

  def run(self, params, step):
    del step
    captions, thumbs = [], []

    def keep(batch):
      captions.extend(batch["captions"])
      stride = max(1, batch["images"].shape[1] // _THUMB)
      thumbs.append(batch["images"][:, ::stride, ::stride])

    out = self.context.encoders.images(params, self.eval_set().batches(self.spec.batch_size), self.spec.batch_size,
                                       keep=keep)
    v = features.l2_normalize(out["v"])

    texts, images_of_text, texts_of_image = {}, [], []
    for i, caps in enumerate(captions):
      mine = []
      for c in caps:
        q = texts.setdefault(c, len(texts))
        if q == len(images_of_text):
          images_of_text.append(set())
        images_of_text[q].add(i)
        mine.append(q)
      texts_of_image.append(set(mine))
    if not texts:
      raise ValueError(f"config.evals.{self.name}: the set has no captions (set caption_key for TFDS sets).")
    rows = features.prompt_rows(self.context.tokenizer, list(texts), self.spec.text_len)
    t = features.l2_normalize(self.context.encoders.texts(params, rows, self.spec.batch_size))

    k = max(RECALL_AT)
    t2i, t2i_scores = features.top_k(t, v, k)
    t2i_hit = np.array([[j in images_of_text[q] for j in row] for q, row in enumerate(t2i)])
    queries = np.array([i for i, mine in enumerate(texts_of_image) if mine])
    i2t, _ = features.top_k(v[queries], t, k)
    i2t_hit = np.array([[q in texts_of_image[i] for q in row] for i, row in zip(queries, i2t)])

    scalars = {f"t2i_r{k}": r for k, r in recall(t2i_hit).items()}
    scalars.update({f"i2t_r{k}": r for k, r in recall(i2t_hit).items()})
    scalars.update(num_images=float(len(v)), num_texts=float(len(t)))

    thumbs = np.concatenate(thumbs)
    n, h = min(self.spec.queries_shown, len(t)), min(self.spec.hits_shown, len(v))
    picture = pictures.retrieval_hits(list(texts)[:n], thumbs[t2i[:n, :h]], t2i_hit[:n, :h], t2i_scores[:n, :h])
    return base.EvalResult(scalars=scalars, images=dict(queries=picture))
