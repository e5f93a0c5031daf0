"""`pip install .` gives the packages (built here as a wheel from this checkout, installed into a folder of its own,
imported from elsewhere), and pyproject.toml pins what requirements.txt pins."""
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pins(lines):
  return {re.split(r"[=<>\[]", line)[0].lower().replace("_", "-"): line.split("==")[1]
          for line in lines if "==" in line}


def test_pyproject_pins_what_requirements_pins():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  with open(os.path.join(REPO, "requirements.txt")) as f:
    required = _pins(line.split("#")[0].strip() for line in f)
  declared = _pins(project["dependencies"] + project["optional-dependencies"]["test"])
  assert declared == required


def test_the_wheel_installs_and_imports_outside_the_checkout(tmp_path):
  # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
  source = tmp_path / "source"
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                  str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
  (wheel,) = (tmp_path / "dist").glob("lcl_jax-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  for want in ("lcl_jax/__init__.py", "lcl_jax/export.py", "lcl_jax/models/vit.py", "lcl_jax/EXPORT.md",
               "data_pipelines/rows.py", "data_pipelines/readers/__init__.py", "configs/common.py",
               "data_pipelines/clip_bpe/bpe_simple_vocab_16e6.txt.gz", "data_pipelines/clip_bpe/NOTICE"):
    assert want in names, want
  assert not any(n.startswith("tests/") for n in names)
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                 check=True, capture_output=True, timeout=300)
  code = ("import lcl_jax, data_pipelines.rows, configs.vitb16_mmc4; "
          "from data_pipelines.clip_tokenizer import ClipTokenizer; "
          "assert lcl_jax.__file__.startswith(%r), lcl_jax.__file__; "
          "assert ClipTokenizer().encode('a dog') == [320, 1929]; "  # the bundled CLIP vocabulary was installed
          "print(lcl_jax.load_vision_encoder.__module__)" % str(target))
  out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(target)),
                       check=True, capture_output=True, text=True, timeout=300)
  assert out.stdout.strip() == "lcl_jax.export"
