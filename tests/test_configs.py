"""Every config in configs/ loads, with and without runlocal, and rejects unknown arguments."""
import importlib
import pathlib

import pytest

CONFIGS = sorted(p.stem for p in pathlib.Path(__file__).parent.parent.joinpath("configs").glob("*.py")
                 if p.stem not in ("__init__", "common"))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_config_loads(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  assert config.model.decoder.vocab_size > max(config.model.special_tokens.values())
  assert config.model.vit.image_size % config.model.vit.patch_size == 0
  if arg == "runlocal":
    assert config.runlocal and config.data.data_dir == "demo"
  elif name != "ablation_digits":  # a demo-sized study by design
    assert not config.runlocal and config.data.data_dir == ""


@pytest.mark.parametrize("name", CONFIGS)
def test_unknown_argument_is_refused(name):
  with pytest.raises(ValueError, match="runlocal"):
    importlib.import_module(f"configs.{name}").get_config("runlokal")
