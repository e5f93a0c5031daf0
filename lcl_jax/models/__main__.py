"""Prints every parameter of a config's model: path, shape, logical axes, count, and totals per tower.

  python -m lcl_jax.models --config=configs/vitl14_laion_mmc4.py
Uses jax.eval_shape: no parameter memory is allocated.
"""
from absl import app
from ml_collections import config_flags

from lcl_jax.summary import parameter_table

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).", lock_config=True)


def main(argv):
  del argv
  config = _CONFIG.value
  rows, towers = parameter_table(config.model)
  width = max(len(r[0]) for r in rows)
  for path, shape, names, count in rows:
    print(f"{path:<{width}}  {str(shape):<22} {str(names):<36} {count:>12,}")
  print()
  for tower, count in towers.items():
    print(f"{tower:<32} {count:>14,}  ({count / 1e6:.2f}M)")
  total = sum(towers.values())
  print(f"{'total':<32} {total:>14,}  ({total / 1e6:.2f}M)")
  print(f"decoder vocabulary: {config.model.decoder.vocab_size} ids "
        f"(tied LM head: {config.model.decoder.tie_embeddings})")


if __name__ == "__main__":
  app.run(main)
