"""The step benchmark runs on a runlocal config, with the real pipeline, and reports consistent numbers."""
import ml_collections

from configs import vitb16_mmc4
from tools import bench


def test_bench_runs_on_runlocal_with_the_pipeline():
  config = vitb16_mmc4.get_config("runlocal")
  config.evals = ml_collections.ConfigDict()
  result = bench.bench(config, steps=2, name="runlocal", with_pipeline=True)
  assert result["step_seconds"] > 0 and result["with_pipeline"]["step_seconds"] > 0
  assert abs(result["images_per_sec"] * result["step_seconds"] - config.data.images_per_batch) < 1e-6
  assert 0 < result["mfu"] < 1.5   # a ratio to a matmul measured in the same run on noisy cores
  assert abs(sum(result["time_share"].values()) - 1) < 1e-6
  assert set(result["time_share"]) == {"vit", "decoder", "lm_head", "contrastive"}
  # The LM head computes the targets rounded up to blocks: at least every target, at most every position + a block per chunk.
  lm = result["lm_head"]
  assert 0 < lm["targets"] <= lm["computed"] <= lm["positions"] + result["devices"] * config.loss.lm_block_size
  assert result["useful_mfu"] <= result["mfu"]
