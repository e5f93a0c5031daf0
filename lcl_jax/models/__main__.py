"""Prints clu's parameter overview of a config's model (name, shape, dtype, size, and the mesh axes of each dimension
under the config's sharding rules) and the totals per tower.

  python -m lcl_jax.models --config=configs/vitl14_laion_mmc4.py
Uses jax.eval_shape: no parameter memory is allocated.
"""
from absl import app, flags
from ml_collections import config_flags


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from lcl_jax import sharding  # pylint: disable=import-outside-toplevel
  from lcl_jax.summary import parameter_table  # pylint: disable=import-outside-toplevel
  config = _CONFIG.value
  # The mesh's shape does not change the axes a dimension maps to: the local devices do.
  mesh = sharding.make_mesh({a: -1 if a == "data" else 1 for a in config.sharding.mesh})
  table, towers = parameter_table(config.model, mesh, sharding.rules(config))
  print(table)
  print()
  for tower, count in towers.items():
    print(f"{tower:<32} {count:>14,}  ({count / 1e6:.2f}M)")
  total = sum(towers.values())
  print(f"{'total':<32} {total:>14,}  ({total / 1e6:.2f}M)")
  print(f"decoder vocabulary: {config.model.decoder.vocab_size} ids "
        f"(tied LM head: {config.model.decoder.tie_embeddings})")


if __name__ == "__main__":
  # Flags exist only when this module runs as the program: importing it must not claim flag names.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, path[:arg].", lock_config=True)
  flags.mark_flags_as_required(["config"])
  app.run(main)
