"""The loss-ablation study's --quick mode end to end (real pipeline, demo corpus, every evaluator): the table has
every variant and metric with finite numbers, the Markdown and the picture are written."""
import json
import math
import os
import subprocess
import sys

from tests import xla_flags
from tools import ablation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_study_writes_complete_table_and_picture(tmp_path):
  # conftest.py gives this process 8 fake CPU devices; the study is defined on the machine's real device(s), where
  # 32 image slots per step are one chunk's budget, not eight budgets of 4 that drop the rows with more images.
  env = dict(os.environ, XLA_FLAGS=xla_flags.with_devices(None))
  proc = subprocess.run([sys.executable, "-m", "tools.ablation", f"--workdir={tmp_path}", "--quick"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]

  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  names = [v.name for v in ablation.VARIANTS]
  assert sorted(results["table"]) == sorted(names + [ablation.INIT])
  for name, row in results["table"].items():
    for m in ablation.METRICS:
      cell = row[m.key]
      assert cell["n"] == 1, (name, m.key)
      assert math.isfinite(cell["mean"]) and math.isfinite(cell["std"]), (name, m.key, cell)
      assert 0.0 <= cell["mean"] <= 1.0, (name, m.key, cell)
  steps = results["budget"]["steps"]
  for run in results["runs"]:
    for key, curve in run["curves"].items():
      # The shared evaluation at initialisation and the one at the last step (--quick evaluates once).
      assert [s for s, _ in curve] == [0, steps], (run["variant"], key, curve)

    # The training loop's contrastive scalars, every logged step, at a batch of >= 128 valid pairs (the study's).
    assert [s for s, _ in run["train"]["contrastive_loss"]] == list(range(1, steps + 1)), run["train"]
    assert run["contrastive"]["valid_pairs_min"] >= 128, run["contrastive"]
    c = run["contrastive"]
    assert 0 < c["chance_acc"] < 1 / 100 and c["chance_loss"] > math.log(128) and math.isfinite(c["loss"])
  assert sorted(results["contrastive"]) == sorted(names)

  md = (tmp_path / "results.md").read_text()
  for v in ablation.VARIANTS:
    assert v.label in md
  for m in ablation.METRICS:
    assert m.label in md
  assert "chance accuracy" in md
  png = (tmp_path / "ablation.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 10_000
