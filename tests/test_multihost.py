"""`python -m lcl_jax.main` as a pod runs it, on this machine: 2 processes (2 CPU devices each, loopback coordinator,
gloo), the real pipeline on the demo corpus, periodic async saves. One run goes straight through; another is stopped
by SIGTERM to one process, restarted, loses a process to kill -9 mid-run, finds its latest checkpoint corrupt
(truncated array file) at the next restart and finishes from the one before. Both end with the same parameters and
metrics, and those parameters equal a one-process run's over the same global batches. The straight run's last
checkpoint then restores on one process (another host count).

Also: the data states of hosts with different keys reach the checkpoint (a two-process gather).
"""
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "multihost_worker.py")
STEPS = 10
OVERRIDES = {"optim.total_steps": STEPS, "ckpt.every_steps": 2, "log_every": 1,
             **{f"evals.{name}.every_steps": 0 for name in ("zeroshot_digits", "retrieval_digits",
                                                             "linear_probe_digits", "attention_probe_digits",
                                                             "perplexity_digits")}}
ARGS = ["--config=configs/vitb16_mmc4.py:runlocal", *(f"--config.{k}={v}" for k, v in OVERRIDES.items())]
STEP_LINE = re.compile(r"\] \[(\d+)\] steps_per_sec")
HEARTBEAT_S = 10  # how soon survivors give a lost process up (jax.distributed; 100 s by default)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(demo_dir, devices):
  return dict(os.environ, XLA_FLAGS=xla_flags.with_devices(devices), JAX_PLATFORMS="cpu", LCL_DEMO_DIR=str(demo_dir))


def _two_processes(workdir, demo_dir, on_step=None, extra=()):
  """Runs both processes to their end. on_step(step, procs) is called for each step process 0 logs.
  -> (return codes, [log of process 0, log of process 1])."""
  port = _free_port()
  logs = [workdir.parent / f"{workdir.name}_{i}_{port}.log" for i in range(2)]
  workdir.mkdir(parents=True, exist_ok=True)
  procs = []
  for i in range(2):
    cmd = [sys.executable, "-m", "lcl_jax.main", f"--workdir={workdir}", *ARGS, *extra,
           f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
           f"--heartbeat_timeout_s={HEARTBEAT_S}"]
    out = subprocess.PIPE if i == 0 else open(logs[1], "w")
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(demo_dir, 2), stdout=out,
                                  stderr=subprocess.STDOUT, text=True))
  lines = []
  for line in procs[0].stdout:
    lines.append(line)
    m = STEP_LINE.search(line)
    if m and on_step is not None:
      on_step(int(m.group(1)), procs)
  codes = [p.wait(timeout=600) for p in procs]
  logs[0].write_text("".join(lines))
  return codes, [p.read_text() for p in logs]


def _config():
  """The config the processes run (configs/vitb16_mmc4.py:runlocal with OVERRIDES)."""
  from configs import vitb16_mmc4
  config = vitb16_mmc4.get_config("runlocal")
  config.update_from_flattened_dict(OVERRIDES)
  return config


def _scalars(workdir, last_file_only=False):
  """{(tag, step): value} of process 0's TensorBoard events (those of its last run only, if asked)."""
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  files = sorted(glob.glob(str(workdir / "events.out.tfevents.*")))  # names start with the creation time
  out = {}
  for path in files[-1:] if last_file_only else files:
    acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    for tag in acc.Tags()["tensors"]:
      for e in acc.Tensors(tag):
        value = tensor_util.make_ndarray(e.tensor_proto)  # scalars arrive packed in tensor_content
        if value.ndim == 0 and value.dtype.kind in "fiu":
          out[(tag, e.step)] = float(value)
  assert out, f"no scalars in {workdir}"
  return out


def _final_params(workdir, step):
  """The params of the last checkpoint, restored as `lcl_jax.evaluate` does on this (one) process."""
  import jax
  from lcl_jax import checkpoint, sharding
  config = _config()
  params, restored = checkpoint.restore_params(config, str(workdir), sharding.make_mesh(config.sharding.mesh))
  assert restored == step
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(params)}


@pytest.fixture(scope="module")
def demo_dir(demo_cache_dir):
  return demo_cache_dir


@pytest.fixture(scope="module")
def straight(tmp_path_factory, demo_dir):
  workdir = tmp_path_factory.mktemp("straight") / "run"
  codes, logs = _two_processes(workdir, demo_dir)
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  # Periodic async saves at every 2 steps, the last 3 kept, each written once for the run (not once per process).
  assert sorted(os.listdir(workdir / "checkpoints")) == sorted(str(s) for s in (STEPS - 4, STEPS - 2, STEPS))
  # Process 1 misses the compilation cache that process 0 hits (JAX on CPU): process 0 waits for it at the barrier
  # over the coordination service, not in the first step's gloo collective, which gives a late peer only 30 s.
  assert "at barrier lcl_jax_train_step_compiled for the other hosts" in logs[0], logs[0][-3000:]
  return workdir


def test_faults_on_two_processes_end_where_a_straight_run_ends(tmp_path, demo_dir, straight):
  workdir = tmp_path / "faults"
  events = {}

  def sigterm_process_1(step, procs):
    if step >= 3 and "sigterm" not in events:
      events["sigterm"] = step
      procs[1].send_signal(signal.SIGTERM)  # one host preempted: every host must stop at the same step and save
  codes, logs = _two_processes(workdir, demo_dir, on_step=sigterm_process_1)
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  # Only process 1 got the signal (JAX's preemption notifier caught it: the trainer installs no handler of its own on
  # several processes, which would replace JAX's); process 0 heard of it through the coordination service, and both
  # saved the same step.
  notices = [re.findall(r"every process saves step (\d+)", log) for log in logs]
  saved = [re.findall(r"Saved step (\d+) after SIGTERM", log) for log in logs]
  assert notices == saved, (notices, saved)
  assert len(saved[0]) == 1 and saved[0] == saved[1], saved
  stopped = int(saved[0][0])
  assert 3 <= stopped < STEPS

  def kill_process_0(step, procs):
    saved = [int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit()]
    if max(saved) > stopped and step > max(saved) and "kill" not in events:  # a periodic save is complete
      events["kill"] = step
      procs[0].kill()  # SIGKILL to the coordinator's host: no save, perhaps an async save half-written
  codes, logs = _two_processes(workdir, demo_dir, on_step=kill_process_0)
  assert f"Resumed from step {stopped}" in logs[0]
  assert codes[0] == -signal.SIGKILL and codes[1] != 0, codes  # the survivor gives up by itself
  killed_at = events["kill"]  # KeyError: the run ended before a periodic save completed (raise STEPS)
  survivor = [line for line in logs[1].splitlines() if "Terminating" in line or "lcl_jax:" in line][-1:]

  latest = max(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())
  arrays = [p for p in (workdir / "checkpoints" / str(latest)).rglob("*") if p.is_file() and "ocdbt.process_" in str(p)]
  largest = max(arrays, key=lambda p: p.stat().st_size)
  with open(largest, "r+b") as f:
    f.truncate(largest.stat().st_size // 2)
  codes, logs = _two_processes(workdir, demo_dir)
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  lines = [line for line in logs[0].splitlines() if "cannot be restored" in line]
  assert len(lines) == 1 and f"Checkpoint step {latest} at {workdir / 'checkpoints' / str(latest)}" in lines[0]
  assert "Traceback" not in logs[0] + logs[1]
  resumed = int(re.search(r"Resumed from step (\d+)", logs[0]).group(1))
  assert stopped <= resumed < latest <= killed_at, (stopped, resumed, latest, killed_at)
  steps = sorted(os.listdir(workdir / "checkpoints"))
  assert str(STEPS) in steps and f"{latest}.corrupt-" in " ".join(steps) and not any("tmp" in s for s in steps)

  faulted, clean = _final_params(workdir, STEPS), _final_params(straight, STEPS)
  assert set(faulted) == set(clean)
  for key in clean:  # the same processes, the same batches, the same order: bit for bit
    np.testing.assert_array_equal(faulted[key], clean[key], err_msg=key)
  print(f"\nfaults: SIGTERM to process 1 -> both saved step {stopped}; kill -9 of process 0 after step {killed_at} "
        f"-> survivor: {survivor}; step {latest} truncated -> resumed from {resumed}: {lines[0]}")
  # And the same metrics after the last resume, data metrics included (the last run's own event file).
  a, b = _scalars(straight), _scalars(workdir, last_file_only=True)
  after = [k for k in a if k[1] > resumed and not k[0].endswith(("per_sec", "mfu", "uptime"))
           and not k[0].startswith("data/skipped")]
  assert any(k[0] == "loss" for k in after) and any(k[0].startswith("data/rows") for k in after)
  for key in after:
    assert a[key] == b[key], key


def test_two_processes_match_one_over_the_same_global_batches(tmp_path, demo_dir, straight):
  workdir = tmp_path / "one"
  proc = subprocess.run([sys.executable, WORKER, str(workdir), "2", "4", json.dumps(OVERRIDES)], cwd=REPO,
                        env=_env(demo_dir, 4), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  one, two = _final_params(workdir, STEPS), _final_params(straight, STEPS)
  assert set(one) == set(two)
  # The same batches, the same programs; only the cross-device sums differ in order (gloo between processes, XLA's
  # in-process all-reduce in one), which moves the last bit of the loss from step 1 on. Adam's first steps turn
  # such round-off in gradients that are ~0 (attention key biases, which softmax ignores) into updates of up to
  # ~lr, and the rest drifts by far less than one update (lr = 1e-3 here).
  a, b = _scalars(workdir), _scalars(straight)
  losses = np.array([[a[("loss", s)], b[("loss", s)]] for s in range(1, STEPS + 1)])
  assert abs(losses[0, 0] - losses[0, 1]) <= 2e-7 * abs(losses[0, 1]), losses[0]  # same params: round-off only
  np.testing.assert_allclose(losses[:, 0], losses[:, 1], rtol=1e-4)
  for key in ("num_valid_images", "num_text_targets", "data/rows"):
    assert all(a[(key, s)] == b[(key, s)] for s in range(1, STEPS + 1)), key  # the same global batches
  diffs = np.concatenate([np.abs(two[k] - one[k]).ravel() for k in one])
  print(f"\n2 processes vs 1 over the same global batches: loss at step 1 {losses[0, 0]:.7f} vs {losses[0, 1]:.7f}, "
        f"largest relative loss gap {np.max(np.abs(losses[:, 0] / losses[:, 1] - 1)):.1e}; params max |diff| "
        f"{diffs.max():.2e}, median {np.median(diffs):.2e}")
  assert diffs.max() < 3e-3 and np.median(diffs) < 1e-5, (diffs.max(), np.median(diffs))


def test_a_two_process_checkpoint_restores_on_one_process(straight, caplog):
  """Another host count, as train.run resumes: the state reshards onto this process's 8 devices, and the data states
  of both old hosts continue on one (from each source's slowest host)."""
  import jax
  from data_pipelines import pipeline
  from lcl_jax import checkpoint, sharding, state as state_lib
  config = _config()
  mesh = sharding.make_mesh(config.sharding.mesh)
  ckpt = checkpoint.Checkpointer(str(straight / "checkpoints"), every_steps=2, keep=3)
  with jax.set_mesh(mesh):
    step, state, hosts = ckpt.restore_latest(state_lib.state_spec(config, mesh).abstract)
  ckpt.close()
  assert step == int(state.step) == STEPS and [h["host"] for h in hosts] == [0, 1]
  assert {d.id for d in jax.tree.leaves(state.params)[0].sharding.device_set} == {d.id for d in jax.devices()}
  data = pipeline.Pipeline(config, num_chunks=sharding.num_data_shards(mesh))
  with caplog.at_level("WARNING"):
    data.set_state(hosts)
  batch, _ = next(data)
  data.close()
  assert any("restored on 1 hosts" in r.getMessage() for r in caplog.records)
  assert batch["tokens"].shape == (config.data.rows_per_batch, config.data.seq_len)
  assert batch["image_valid"].any() and (batch["segment_ids"] > 0).any()  # real rows, not padding


def test_data_states_with_different_keys_per_host_reach_the_checkpoint(tmp_path):
  """Host 1 has a skip counter host 0 never saw (the crash at the first periodic save this replaced)."""
  script = textwrap.dedent("""
      import sys, jax
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(f"localhost:{sys.argv[1]}", 2, int(sys.argv[2]))
      import numpy as np
      from jax.sharding import NamedSharding, PartitionSpec
      from lcl_jax import checkpoint
      replicated = NamedSharding(jax.make_mesh((2,), ("data",)), PartitionSpec())
      me = jax.process_index()
      state = {"position": 2**40 + me, **({"skipped/lcl_mmc4/no_image_kept": 7} if me else {})}
      ckpt = checkpoint.Checkpointer(sys.argv[3], every_steps=1, keep=2)
      for step in (1, 2):  # an async save, then a synchronous one
        w = jax.make_array_from_process_local_data(replicated, np.full(4, step, np.float32))
        ckpt.save(step, {"w": w}, dict(state, step=step), wait=step == 2)
      _, hosts = ckpt.restore_arrays(2)
      ckpt.close()
      print("HOSTS", hosts)
      """)
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(XLA_FLAGS=xla_flags.with_devices(1), JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", script, str(port), str(i), str(tmp_path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  expected = [{"position": 2**40, "step": 2}, {"position": 2**40 + 1, "skipped/lcl_mmc4/no_image_kept": 7, "step": 2}]
  assert f"HOSTS {expected}" in outs[0], outs[0][-2000:]
