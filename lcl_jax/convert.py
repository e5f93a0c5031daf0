"""Imports a checkpoint trained elsewhere as an lcl_jax artefact, without torch.

  python -m lcl_jax.convert --from=open_clip --checkpoint=PATH.pt|.safetensors --output=DIR [--config=CFG[:ARG]]
      [--vision_only]

--from=open_clip: the authors' LCL (their open_clip fork, e.g. the released LCL_ViT-B-16_laion). The file is read
by lcl_jax.interop.torch_files (a restricted unpickler: tensors and plain containers only) and mapped by
lcl_jax.interop.open_clip onto the config's model section (default configs/lcl_vitb16_laion_openclip.py). A
checkpoint with their text tower becomes a whole-model artefact (`config.init_from=DIR` starts training from
every parameter, `lcl_jax.evaluate --init_from=DIR` evaluates it); --vision_only, or a vision-only checkpoint,
gives the vision encoder (`lcl_jax.load_vision_encoder(DIR)`, or init_from for the ViT and pool alone).
A checkpoint that does not fit the config ends in one line listing every missing, extra or mis-shaped tensor
(exit 2).
"""
import json
import sys

from absl import app, flags
from ml_collections import config_flags

from lcl_jax import export
from lcl_jax.evaluators import datasets
from lcl_jax.interop import open_clip, torch_files


def convert(config, checkpoint: str, output: str, *, vision_only: bool = False) -> str:
  """-> "whole_model" or "vision_encoder", what was written to `output`."""
  model = json.loads(config.model.to_json())
  state = torch_files.read_state_dict(checkpoint)
  whole = open_clip.has_text_tower(state) and not vision_only
  params = open_clip.model_params(state, model) if whole else open_clip.vision_params(state, model)
  tokenizer = datasets.load_tokenizer(config) if whole else None  # the ids the imported decoder reads
  export.write_artefact(output, model, params, step=None, name=f"{config.get('name', '')} (imported)",
                        whole_model=whole, tokenizer=tokenizer)
  return "whole_model" if whole else "vision_encoder"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  output = _OUTPUT.value
  try:
    contents = convert(_CONFIG.value, _CHECKPOINT.value, output, vision_only=_VISION_ONLY.value)
  except (open_clip.ConversionError, torch_files.CheckpointFormatError, OSError) as e:
    print(f"lcl_jax: {e}", file=sys.stderr)
    sys.exit(2)
  use = (f"config.init_from={output} or lcl_jax.evaluate --init_from={output}" if contents == "whole_model"
         else f"lcl_jax.load_vision_encoder({output!r})")
  print(f"Wrote {output} ({contents.replace('_', ' ')}): {use}.")


if __name__ == "__main__":
  # Flags exist only when this module runs as the program: importing it must not claim flag names.
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/lcl_vitb16_laion_openclip.py",
                                            "Config file, path[:arg]: the config whose model section the checkpoint "
                                            "matches.", lock_config=True)
  _FROM = flags.DEFINE_enum("from", "open_clip", ["open_clip"], "The checkpoint's code base: open_clip, the authors' "
                            "LCL.")
  _CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The checkpoint file: .pt / .pth / .bin (torch zip) or "
                                    ".safetensors.")
  _OUTPUT = flags.DEFINE_string("output", None, "Folder for the lcl_jax artefact (local or gs://).")
  _VISION_ONLY = flags.DEFINE_bool("vision_only", False, "Write only the vision encoder (visual.* and "
                                   "pool_project.*).")
  flags.mark_flags_as_required(["checkpoint", "output"])
  app.run(main)
