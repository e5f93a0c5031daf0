"""python -m data_pipelines.demo [--cache_dir=DIR]: builds the demo corpus if it is not there yet, prints its paths."""
import json
import time

from absl import app, flags

from data_pipelines.demo import ensure_demo


def main(argv):
  del argv
  start = time.time()
  paths = ensure_demo(_CACHE_DIR.value)
  print(json.dumps(dict(root=paths.root, manifest=paths.manifest, reports=paths.reports), indent=2, sort_keys=True))
  print(f"ready in {time.time() - start:.1f} s")


if __name__ == "__main__":
  # Flags exist only when this module runs as the program: importing it must not claim flag names.
  _CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Parent folder of demo_v1 (default $LCL_DEMO_DIR or "
                                   "~/.cache/lcl_jax).")
  app.run(main)
