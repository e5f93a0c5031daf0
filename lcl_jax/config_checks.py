"""Start-up checks: a bad configuration fails before any compute, with a message that says what to change."""
import jax

from data_pipelines import batch_spec
from lcl_jax.models import attention


class ConfigError(ValueError):
  pass


def check(config, *, num_data_shards: int) -> None:
  """Raises ConfigError naming the key to fix. Unknown keys are refused earlier by the locked ConfigDict."""
  d, m = config.data, config.model
  chunks = num_data_shards * config.optim.grad_accum_steps
  for key in ("rows_per_batch", "images_per_batch"):
    if d[key] <= 0 or d[key] % chunks:
      raise ConfigError(
          f"config.data.{key}={d[key]} must be a positive multiple of the number of chunks, {chunks} "
          f"(= {num_data_shards} data shards x config.optim.grad_accum_steps={config.optim.grad_accum_steps}). "
          f"Set --config.data.{key}={max(chunks, d[key] // chunks * chunks)} or change config.sharding.mesh.")
  if d.seq_len > m.decoder.max_len:
    raise ConfigError(f"config.data.seq_len={d.seq_len} exceeds config.model.decoder.max_len={m.decoder.max_len}.")
  patches = batch_spec.patches_per_image(m.vit)
  if m.vit.image_size % m.vit.patch_size:
    raise ConfigError(f"config.model.vit.image_size={m.vit.image_size} must be a multiple of "
                      f"config.model.vit.patch_size={m.vit.patch_size}.")
  if patches + 4 > d.seq_len:
    raise ConfigError(f"An image span ({patches} patches + 2 markers) does not fit config.data.seq_len="
                      f"{d.seq_len} with <s> text </s>; raise seq_len or the patch size.")
  if not config.loss.contrastive_weight and not config.loss.generation_weight:
    raise ConfigError("config.loss.contrastive_weight and config.loss.generation_weight are both 0: nothing to "
                      "train.")
  if not d.sources or any(w < 0 for w in d.sources.values()) or not sum(d.sources.values()):
    raise ConfigError(f"config.data.sources={dict(d.sources)} needs at least one positive weight.")
  for key in ("data_dir", "tokenizer"):
    if not d[key]:
      raise ConfigError(f"config.data.{key} is empty: pass --config.data.{key}=PATH (local or gs://), or "
                        f"'demo' for the bundled demo corpus.")
  try:
    attention.resolve(m.attention, jax.default_backend())
  except attention.KernelUnavailable as e:
    raise ConfigError(str(e)) from None
  if config.loss.lm_block_size < 1:
    raise ConfigError(f"config.loss.lm_block_size={config.loss.lm_block_size} must be a positive number of "
                      "positions (default 512; it need not divide the sequence).")
  if config.optim.total_steps <= 0:
    raise ConfigError(f"config.optim.total_steps={config.optim.total_steps} must be positive.")
