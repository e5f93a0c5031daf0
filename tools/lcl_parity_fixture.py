"""Writes tests/fixtures/lcl_parity.pt + .npz with the authors' own code: their whole LCL model (OpenGVLab/LCL, an
open_clip fork) at a tiny size with random weights, run on a fixed interleaved batch, with their loss.
tests/test_open_clip_parity.py imports the state dict without torch (lcl_jax.interop) and must reproduce every
output. The fixture holds numbers only. With --check_export, it loads what lcl_jax exported instead, through their
own `open_clip.create_model(name, pretrained=PATH)` (strict), and compares its outputs with the fixture's.

Set-up (the authors' repository exported to a folder, a venv with the CPU torch wheel and their dependencies):
  git -C LCL_GITDIR archive HEAD | tar -x -C /tmp/lcl_ref
  /tmp/venv-ref/bin/pip install torch==2.13.0 numpy ftfy regex tqdm huggingface_hub pillow safetensors
  /tmp/venv-ref/bin/pip install --no-deps torchvision==0.28.0
  /tmp/venv-ref/bin/python tools/lcl_parity_fixture.py --src=/tmp/lcl_ref/src [--torchvision_shim_dir=DIR]
(their open_clip imports torchvision; the PyPI torchvision wheel needs a shim beside the CPU torch wheel, in DIR).

The batch, their layout (L = 48, 16 latents per image, pad 0): row 0 an MMC4-like document with two images
`<sot> t t t <soi> img.. <eoi> t t t t <soi> img.. <eoi> t t <eot>`; row 1 their image-first LAION pair
`<soi> img.. <eoi> t t t t t <eot>` (its image has no context: no contrastive pair); row 2 their text-first pair
`<sot> t t t t t t <soi> img.. <eoi>`. Saved, float32 unless said:
  images uint8 [4, 32, 32, 3] (normalised with CLIP's mean and std inside), tokens int [3, 48]
  patch_latents [4, 16, 64]  ln_post output without the class token     pooled [4, 64]  the attentive pool's output
  projected [4, 16, 64]      the pool's value path (the decoder's image inputs)
  boi_hidden [3, 64]         the text tower's output at every `<soi>` after position 0 (before ln_final)
  image_features, text_features [3, 64]  normalised v and t of those 3 pairs
  logits [T, 40], labels int [T]  the LM head at every generation target, row-major
  logit_scale [], contrastive_loss [], caption_loss []  (their LCLLoss with both weights 1)
"""
import argparse
import json
import os
import sys

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")
NAME = "lcl_parity"
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
SOT, EOT, IMG, SOI, EOI = 35, 36, 37, 38, 39
# The authors' LCL_ViT-B-16_laion at toy size: the same structure, 64 wide.
TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 48, "vocab_size": 40, "width": 64, "heads": 4, "layers": 2},
    "pool_project_cfg": {"pool_proj_type": "attn", "input_dim": 64, "output_dim": 64, "attn_num_heads": 4},
    "special_token_ids": {"<start_of_text>": SOT, "<end_of_text>": EOT, "<img_placehold>": IMG,
                          "<start_of_img>": SOI, "<end_of_img>": EOI},
    "custom_text": True,
}


def batch():
  rng = np.random.default_rng(0)
  text = lambda n: list(rng.integers(1, SOT, n))  # ids 1..34: 0 is their pad
  image = [SOI] + [IMG] * 16 + [EOI]
  rows = [[SOT] + text(3) + image + text(4) + image + text(2) + [EOT],
          image + text(5) + [EOT],
          [SOT] + text(6) + image]
  tokens = np.zeros((3, 48), np.int64)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
  images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  return images, tokens


def run(torch, model, loss_fn, images, tokens):
  """Their forward and loss on the batch -> the saved outputs."""
  x = torch.from_numpy(((images / 255.0 - CLIP_MEAN) / CLIP_STD).astype(np.float32)).permute(0, 3, 1, 2)
  text = torch.from_numpy(tokens)
  captured = {}
  model.visual.ln_post.register_forward_hook(lambda m, i, o: captured.__setitem__("ln_post", o))
  model.text.transformer.register_forward_hook(lambda m, i, o: captured.__setitem__("text_out", o))
  with torch.no_grad():
    pooled, projected = model._encode_image(x)  # pylint: disable=protected-access
    out = model(image=x, text=text)
    losses = loss_fn(out["image_features"], out["text_features"], out["logits"], out["labels"],
                     out["logit_scale"], output_dict=True)
  hidden = captured["text_out"].permute(1, 0, 2)                    # their transformer runs LND
  soi = (text == SOI) & (torch.arange(text.shape[1])[None] > 0)
  return dict(patch_latents=captured["ln_post"][:, 1:].numpy(), pooled=pooled.numpy(), projected=projected.numpy(),
              boi_hidden=hidden[soi].numpy(), image_features=out["image_features"].numpy(),
              text_features=out["text_features"].numpy(), logits=out["logits"].numpy(),
              labels=out["labels"].numpy(), logit_scale=np.float32(model.logit_scale.item()),
              contrastive_loss=np.float32(losses["contrastive_loss"].item()),
              caption_loss=np.float32(losses["caption_loss"].item()))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--src", required=True, help="the exported repository's src/ (holds open_clip/)")
  p.add_argument("--torchvision_shim_dir", default=None, help="a folder with tv_shim.py, imported first")
  p.add_argument("--check_export", default=None,
                 help="instead of writing the fixture: a folder from lcl_jax.export --format=open_clip (of the "
                      "imported fixture); load its open_clip_model.pt with their create_model (its model config "
                      "LCL_lcl_jax.json, strict) and its .safetensors with load_state_dict(strict=True), and "
                      "compare their outputs with the fixture's")
  args = p.parse_args()
  if args.torchvision_shim_dir:
    sys.path.insert(0, args.torchvision_shim_dir)
    import tv_shim  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  sys.path.insert(0, args.src)
  import torch  # pylint: disable=import-outside-toplevel
  import open_clip  # pylint: disable=import-outside-toplevel
  from open_clip.loss import LCLLoss  # pylint: disable=import-outside-toplevel
  from open_clip.lcl_model import LCL  # pylint: disable=import-outside-toplevel

  loss_fn = LCLLoss(generation_loss_weight=1.0, contrastive_loss_weight=1.0, local_loss=True)
  if args.check_export:
    # Their factory reads the exported model config (LCL_lcl_jax.json) and loads the .pt strictly.
    open_clip.add_model_config(args.check_export)
    model = open_clip.create_model("LCL_lcl_jax", pretrained=os.path.join(args.check_export, "open_clip_model.pt"))
    with open(os.path.join(args.check_export, "LCL_lcl_jax.json")) as f:
      exported = json.load(f)
    import safetensors.torch  # pylint: disable=import-outside-toplevel
    again = LCL(**{k: v for k, v in exported.items() if k != "custom_text"})
    again.load_state_dict(safetensors.torch.load_file(os.path.join(args.check_export, "open_clip_model.safetensors")),
                          strict=True)
    want = dict(np.load(os.path.join(OUT, f"{NAME}.npz")))
    for which, m in (("create_model(.pt)", model.eval()), ("load_state_dict(.safetensors)", again.eval())):
      got = run(torch, m, loss_fn, want["images"], want["tokens"])
      print(which, json.dumps({k: float(np.max(np.abs(np.asarray(v, np.float64) - want[k]))) for k, v in got.items()}))
    return
  torch.manual_seed(0)
  model = LCL(**{k: v for k, v in TINY.items() if k != "custom_text"}).eval()
  with torch.no_grad():  # no parameter at its exact init value (ones, zeros): every tensor's mapping is visible
    for param in model.parameters():
      param.add_(0.05 * torch.randn_like(param))
  images, tokens = batch()
  out = run(torch, model, loss_fn, images, tokens)
  os.makedirs(OUT, exist_ok=True)
  torch.save(model.state_dict(), os.path.join(OUT, f"{NAME}.pt"))
  np.savez(os.path.join(OUT, f"{NAME}.npz"), images=images, tokens=tokens, **out)
  print({k: tuple(np.shape(v)) for k, v in out.items()})


if __name__ == "__main__":
  main()
