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


@pytest.mark.parametrize("name", CONFIGS)
def test_paper_recipe_does_not_clip_gradients(name):
  """Tables 7 and 9 of the paper list no gradient clipping; it stays an option (config.optim.grad_clip_norm)."""
  config = importlib.import_module(f"configs.{name}").get_config(None)
  assert config.optim.grad_clip_norm == 0


def test_a_non_positive_lm_block_size_fails_at_start_up():
  from configs import vitb16_mmc4  # pylint: disable=import-outside-toplevel
  from lcl_jax import config_checks  # pylint: disable=import-outside-toplevel
  config = vitb16_mmc4.get_config("runlocal")
  config_checks.check(config, num_data_shards=1)
  config.loss.lm_block_size = 0
  with pytest.raises(config_checks.ConfigError, match="config.loss.lm_block_size=0 must be a positive"):
    config_checks.check(config, num_data_shards=1)
