"""Test setup: 8 fake CPU devices, set before anything imports jax."""
import os

# XLA's CPU backend emits each fusion through MLIR by default ("fusion emitters"); its older LLVM IR emitters compile
# the same HLO in about half the CPU time (the runlocal train step: 10.7-11.4 s -> 5.0-6.9 s, one compile on 2 cores),
# and the suite is mostly compiles. Subprocesses keep it (tests/xla_flags.py). A flag the pinned jaxlib knows.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false").strip()
from tests import xla_flags  # noqa: E402

os.environ["XLA_FLAGS"] = xla_flags.with_devices(8)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow must never grab an accelerator the JAX side wants.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# Identical programs compiled again in one session (every train.run in a test recompiles its step, every trainer
# subprocess its small helpers) come from a persistent compilation cache instead: the suite's time is mostly XLA
# compiles on 2 cores. Every program is cached, however quick: reading one back is quicker still (test_main: -7%).
import tempfile  # noqa: E402

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="lcl_jax_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The tests' programs run a few tiny steps, so LLVM's optimisation is mostly wasted: jax's switch for that case (LLVM
# at -O0; XLA's HLO passes, and so the programs' sharding and collectives, unchanged). Numbers are the same up to float
# round-off; a sharded-step test went 72 s -> 53 s, the suite 977 s -> 768-800 s. Subprocesses inherit it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


import pytest  # noqa: E402


# The files that take longest (several processes each), started first: under pytest-xdist's loadfile a long file
# scheduled last runs alone at the end while the other worker idles.
_SLOWEST_FIRST = ("test_multihost.py", "test_ablation.py", "test_open_clip_parity.py", "test_train_step.py",
                  "test_bench.py", "test_main.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))  # stable: order within kept


def pytest_configure(config):
  """With workers (pytest-xdist, pytest.ini's -n), the controller builds the demo corpus before they start: each
  would otherwise build the same corpus at the same time (correct, the last rename wins, but a minute per worker)."""
  if not hasattr(config, "workerinput") and config.getoption("numprocesses", default=None):
    from data_pipelines import demo  # pylint: disable=import-outside-toplevel
    demo.ensure_demo()


@pytest.fixture(scope="session")
def demo_cache_dir():
  """The parent folder ($LCL_DEMO_DIR) of the demo corpus that the tests share, built once by this process before
  any subprocess reads it (two trainers starting together would otherwise both build it)."""
  from data_pipelines import demo
  return os.path.dirname(demo.ensure_demo().root)
