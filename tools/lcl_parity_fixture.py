"""Writes tests/fixtures/lcl_vision_parity.pt + .npz with the authors' own code: their LCL model (OpenGVLab/LCL, an
open_clip fork) at a tiny size with random weights, run on fixed images. tests/test_open_clip_parity.py imports the
state dict without torch (lcl_jax.interop) and must reproduce the outputs. The fixture holds numbers only.

Set-up (the authors' repository exported to a folder, a venv with the CPU torch wheel and their dependencies):
  git -C LCL_GITDIR archive HEAD | tar -x -C /tmp/lcl_ref
  /tmp/venv-ref/bin/pip install torch==2.13.0 numpy ftfy regex tqdm huggingface_hub pillow
  /tmp/venv-ref/bin/pip install --no-deps torchvision==0.28.0
  /tmp/venv-ref/bin/python tools/lcl_parity_fixture.py --src=/tmp/lcl_ref/src [--torchvision_shim_dir=DIR]
(their open_clip imports torchvision; the PyPI torchvision wheel needs a shim beside the CPU torch wheel, in DIR).

Saved outputs, float32, for images uint8 [4, 32, 32, 3] normalised with CLIP's mean and std:
  patch_latents  [4, 16, 64]  ln_post output without the class token (what the pool and the decoder read)
  pooled         [4, 64]      the attentive pool's output (v, before normalisation)
  projected      [4, 16, 64]  the pool's value path on every patch (the decoder's image inputs)
"""
import argparse
import os
import sys

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
# The authors' LCL_ViT-B-16_laion at toy size: the same structure, 64 wide.
TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 40, "width": 64, "heads": 4, "layers": 1},
    "pool_project_cfg": {"pool_proj_type": "attn", "input_dim": 64, "output_dim": 64, "attn_num_heads": 4},
    "special_token_ids": {"<start_of_text>": 35, "<end_of_text>": 36, "<img_placehold>": 37, "<start_of_img>": 38,
                          "<end_of_img>": 39},
}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--src", required=True, help="the exported repository's src/ (holds open_clip/)")
  p.add_argument("--torchvision_shim_dir", default=None, help="a folder with tv_shim.py, imported first")
  p.add_argument("--check_export", default=None,
                 help="instead of writing the fixture: load this open_clip_vision.safetensors (lcl_jax.export "
                      "--format=open_clip, or open_clip.vision_state_dict of the imported fixture) into their "
                      "model and compare its outputs with the fixture's")
  args = p.parse_args()
  if args.torchvision_shim_dir:
    sys.path.insert(0, args.torchvision_shim_dir)
    import tv_shim  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  sys.path.insert(0, args.src)
  import torch  # pylint: disable=import-outside-toplevel
  from open_clip.lcl_model import LCL  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  model = LCL(**TINY).eval()
  with torch.no_grad():  # no parameter at its exact init value (ones, zeros): every tensor's mapping is visible
    for param in model.parameters():
      param.add_(0.05 * torch.randn_like(param))
  if args.check_export:
    import safetensors.torch  # pylint: disable=import-outside-toplevel
    result = model.load_state_dict(safetensors.torch.load_file(args.check_export), strict=False)
    vision_missing = [k for k in result.missing_keys if k.startswith(("visual.", "pool_project."))]
    assert not vision_missing and not result.unexpected_keys, (vision_missing, result.unexpected_keys)
    want = np.load(os.path.join(OUT, "lcl_vision_parity.npz"))
    x = torch.from_numpy(((want["images"] / 255.0 - CLIP_MEAN) / CLIP_STD).astype(np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
      pooled, projected = model._encode_image(x)  # pylint: disable=protected-access
    print({"pooled": float(np.abs(pooled.numpy() - want["pooled"]).max()),
           "projected": float(np.abs(projected.numpy() - want["projected"]).max())})
    return
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  x = torch.from_numpy(((images / 255.0 - CLIP_MEAN) / CLIP_STD).astype(np.float32)).permute(0, 3, 1, 2)
  captured = {}
  model.visual.ln_post.register_forward_hook(lambda m, i, o: captured.setdefault("ln_post", o))
  with torch.no_grad():
    pooled, projected = model._encode_image(x)  # pylint: disable=protected-access
  state = {k: v for k, v in model.state_dict().items() if k.startswith(("visual.", "pool_project.", "logit"))}
  os.makedirs(OUT, exist_ok=True)
  torch.save(state, os.path.join(OUT, "lcl_vision_parity.pt"))
  np.savez(os.path.join(OUT, "lcl_vision_parity.npz"), images=images,
           patch_latents=captured["ln_post"][:, 1:].numpy(), pooled=pooled.numpy(), projected=projected.numpy())
  print({k: tuple(v.shape) for k, v in state.items()})


if __name__ == "__main__":
  main()
