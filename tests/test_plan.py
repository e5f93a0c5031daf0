"""The planner: compiled FLOPs and memory agree with analytic counts; collectives are parsed from HLO."""
import numpy as np

from configs import vitb16_mmc4
from lcl_jax import metrics, sharding
from tools import plan


def test_plan_agrees_with_analytic_counts():
  config = vitb16_mmc4.get_config("runlocal")
  config.model.dtype = "float32"
  config.sharding.mesh = dict(data=4, fsdp=2, tensor=1)
  mesh = sharding.make_mesh(config.sharding.mesh)
  result = plan.plan_once(config, mesh, "h200", 989e12, 141, 0.4)
  # XLA counts every op (softmax, norms, the optimizer); the analytic count only matmuls and attention.
  ratio = result["xla_flops_per_step"] / result["model_flops_per_step"]
  assert 0.95 < ratio < 1.10, ratio
  # Parameters: float32, split over fsdp=2 where a dimension is 'embed'; AdamW keeps two moments of each.
  params_bytes = 4 * result["parameters"]
  per_device = result["memory_per_device_gib"]["params"] * 2**30
  assert params_bytes / 2 * 0.9 < per_device < params_bytes * 0.6, (per_device, params_bytes)
  np.testing.assert_allclose(result["memory_per_device_gib"]["optimizer"],
                             2 * result["memory_per_device_gib"]["params"], rtol=0.1)
  mem = result["memory_per_device_gib"]
  assert mem["total"] >= mem["arguments"] > mem["params"] and mem["fits"]
  assert result["collective_bytes_per_device_per_step"].get("all-gather", 0) > 0   # fsdp gathers params
  expected_seconds = result["model_flops_per_step"] / (8 * 989e12 * 0.4)
  np.testing.assert_allclose(result["predicted_step_seconds"], expected_seconds)


def test_collective_bytes_from_hlo_text():
  hlo = """
    %all-gather.1 = f32[16,64]{1,0} all-gather(f32[8,64]{1,0} %p), dimensions={0}
    %ar = (bf16[4,4]{1,0}, f32[10]{0}) all-reduce(%a, %b), to_apply=%add
    %rs.2 = f32[2,3]{1,0} reduce-scatter(f32[4,3]{1,0} %c), dimensions={0}
    %add.3 = f32[16,64]{1,0} add(%x, %y)
  """
  assert plan.collective_bytes(hlo) == {"all-gather": 16 * 64 * 4, "all-reduce": 4 * 4 * 2 + 40,
                                        "reduce-scatter": 24}


def test_device_table():
  assert metrics.device_spec("NVIDIA H200")[0] == "h200"
  assert metrics.device_spec("tpu_v5p")[2] == 95
  assert metrics.device_spec("cpu") is None
