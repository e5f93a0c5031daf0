"""The launch scripts: syntax, shellcheck, dry runs, and full runs against stand-ins.

No network and no gcloud/SLURM needed: stand-in `gcloud`, `srun`, `scontrol`, `uv` and
`python` executables on PATH record what they are asked to do.
"""
import os
import re
import shlex
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU = REPO / "launch" / "tpu_vm.sh"
SLURM = REPO / "launch" / "gpu_slurm.sbatch"
JAX_PIN = re.search(r"^jax\[\w+\]==(\S+)", (REPO / "requirements.txt").read_text(), re.M).group(1)

CONFIG = "configs/vitb16_mmc4.py:runlocal"
WORKDIR = "gs://bucket/runs/test"
MAIN = f"python -m lcl_jax.main --config={CONFIG} --workdir={WORKDIR}"


def _write_exe(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture
def tripwire(tmp_path):
    """A PATH directory whose every tool writes a marker: a dry run must never create it."""
    bin_dir, marker = tmp_path / "tripwire", tmp_path / "EXECUTED"
    for tool in ("gcloud", "gsutil", "srun", "tar", "scp", "ssh", "curl", "git", "python", "python3"):
        _write_exe(bin_dir / tool, f'echo "{tool} $*" >> {shlex.quote(str(marker))}\n')
    return bin_dir, marker


def _clean_env(**overrides):
    """The environment minus any real SLURM/launcher settings of the machine running the tests."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "LCL_", "JAX_LOCAL_DEVICE_IDS", "XLA_"))
           and k not in ("DRY_RUN", "CUDA_VISIBLE_DEVICES")}
    env.update(overrides)
    return env


def _commands(stdout: str) -> list[str]:
    return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


def _one(commands: list[str], *needles: str) -> str:
    hits = [c for c in commands if all(n in c for n in needles)]
    assert len(hits) == 1, f"expected one command with {needles}, got {hits}\nall:\n" + "\n".join(commands)
    return hits[0]


# ----------------------------------------------------------------------------- static checks

@pytest.mark.parametrize("script", [TPU, SLURM], ids=lambda p: p.name)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed on this machine")
@pytest.mark.parametrize("script", [TPU, SLURM], ids=lambda p: p.name)
def test_shellcheck(script):
    result = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [TPU, SLURM], ids=lambda p: p.name)
def test_help(script):
    result = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, env=_clean_env())
    assert result.returncode == 0
    assert "--config" in result.stdout and "--workdir" in result.stdout and "--dry_run" in result.stdout


# ----------------------------------------------------------------------------- TPU VM dry runs

def _tpu_dry_run(tripwire, *flags):
    bin_dir, marker = tripwire
    result = subprocess.run(
        ["bash", str(TPU), "--dry_run", f"--config={CONFIG}", f"--workdir={WORKDIR}", *flags],
        capture_output=True, text=True, env=_clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"))
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "dry run executed: " + marker.read_text()
    return _commands(result.stdout)


def test_tpu_dry_run_plain_create(tripwire):
    cmds = _tpu_dry_run(tripwire, "--name=my-tpu", "--zone=us-east5-a", "--project=my-proj",
                        "--accelerator_type=v5p-256", "--runtime_version=v2-alpha-tpuv5")
    create = _one(cmds, "gcloud compute tpus tpu-vm create my-tpu")
    for flag in ("--zone=us-east5-a", "--project=my-proj", "--accelerator-type=v5p-256", "--version=v2-alpha-tpuv5"):
        assert flag in create
    assert not [c for c in cmds if "queued-resources" in c]
    # The working tree goes to every worker, then requirements and jax[tpu] are installed on every worker.
    _one(cmds, "tar -czf")
    _one(cmds, "tpu-vm scp", "--worker=all")
    install = _one(cmds, "--worker=all", "pip install", "-r lcl_jax/requirements.txt")
    assert f"jax[tpu]=={JAX_PIN}" in install
    start = _one(cmds, "--worker=all", MAIN)
    assert "nohup" in start and "lcl_jax.log" in start
    _one(cmds, "--worker=0", "tail", "lcl_jax.log")
    assert not [c for c in cmds if " delete " in c], "no teardown unless asked"
    # Order: create before copy before install before start.
    order = [cmds.index(c) for c in (create, install, start)]
    assert order == sorted(order)


def test_tpu_dry_run_queued_with_teardown(tripwire):
    cmds = _tpu_dry_run(tripwire, "--name=qr-1", "--queued", "--accelerator_type=v5p-256", "--teardown")
    create = _one(cmds, "gcloud compute tpus queued-resources create qr-1")
    assert "--node-id=qr-1" in create and "--accelerator-type=v5p-256" in create
    _one(cmds, "queued-resources describe qr-1", "state.state")  # waits for ACTIVE
    assert not [c for c in cmds if "tpu-vm create" in c]
    _one(cmds, "--worker=all", MAIN)
    teardown = _one(cmds, "gcloud compute tpus queued-resources delete qr-1")
    assert "--force" in teardown and cmds[-1] == teardown


def test_tpu_dry_run_plain_teardown_and_reuse(tripwire):
    cmds = _tpu_dry_run(tripwire, "--name=my-tpu", "--reuse", "--teardown")
    assert cmds[0].startswith("gcloud compute tpus tpu-vm describe my-tpu")  # the probe --reuse makes
    assert "tpu-vm create my-tpu" in cmds[1]  # a dry run assumes the VM does not exist yet
    assert cmds[-1].startswith("gcloud compute tpus tpu-vm delete my-tpu")


def test_tpu_dry_run_git_source(tripwire):
    cmds = _tpu_dry_run(tripwire, "--source=git", "--repo=https://example.com/lcl_jax.git", "--branch=dev")
    _one(cmds, "--worker=all", "git clone --depth=1 --branch=dev https://example.com/lcl_jax.git lcl_jax")
    assert not [c for c in cmds if "tar -czf" in c or "tpu-vm scp" in c]


def test_tpu_dry_run_extra_args(tripwire):
    cmds = _tpu_dry_run(tripwire, "--extra=--config.total_steps=10 --config.seed=3")
    _one(cmds, "--worker=all", f"{MAIN} --config.total_steps=10 --config.seed=3")


@pytest.mark.parametrize("workdir", ["/tmp/run", "runs/x", "s3://bucket/x", "gs://"])
def test_tpu_refuses_non_gcs_workdir(tripwire, workdir):
    bin_dir, marker = tripwire
    result = subprocess.run(["bash", str(TPU), "--dry_run", f"--config={CONFIG}", f"--workdir={workdir}"],
                            capture_output=True, text=True,
                            env=_clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"))
    assert result.returncode != 0
    assert "--workdir" in result.stderr and "gs://" in result.stderr
    assert not _commands(result.stdout) and not marker.exists()


@pytest.mark.parametrize("flags, message", [
    ([f"--workdir={WORKDIR}"], "--config"),
    ([f"--config={CONFIG}"], "--workdir"),
    ([f"--config={CONFIG}", f"--workdir={WORKDIR}", "--source=git"], "--repo"),
    ([f"--config={CONFIG}", f"--workdir={WORKDIR}", "--bogus=1"], "--bogus"),
])
def test_tpu_rejects_bad_flags(flags, message):
    result = subprocess.run(["bash", str(TPU), "--dry_run", *flags], capture_output=True, text=True,
                            env=_clean_env())
    assert result.returncode != 0 and message in result.stderr


# ----------------------------------------------------------------------------- TPU VM end to end (stand-in gcloud)

FAKE_GCLOUD = r"""
# Stand-in for gcloud: logs each call; ssh and scp act on per-worker home directories
# $FAKE_TPU/worker0 and worker1, the way gcloud reaches the workers of a 2-host slice.
echo "$*" >> "$FAKE_TPU/calls.log"
sub="$1 $2 $3 $4"
worker=0 command="" positional=()
for arg in "${@:5}"; do
  case $arg in
    --worker=*) worker=${arg#*=} ;;
    --command=*) command=${arg#*=} ;;
    --*) ;;
    *) positional+=("$arg") ;;
  esac
done
[[ $worker == all ]] && workers=(0 1) || workers=("$worker")
case $sub in
  "compute tpus tpu-vm describe") echo READY ;;
  "compute tpus queued-resources describe") echo ACTIVE ;;
  "compute tpus tpu-vm ssh")
    for w in "${workers[@]}"; do
      (cd "$FAKE_TPU/worker$w" && HOME=$PWD bash -c "$command") || exit $?
    done ;;
  "compute tpus tpu-vm scp")
    src=${positional[0]} dest=${positional[1]#*:}
    for w in "${workers[@]}"; do cp "$src" "$FAKE_TPU/worker$w/$dest"; done ;;
esac
exit 0
"""

FAKE_UV = r"""
# Stand-in for uv: "venv DIR" makes DIR/bin/python, a stand-in trainer; "pip" is logged.
echo "uv $*" >> "$HOME/uv.log"
if [[ $1 == venv ]]; then
  mkdir -p "${@: -1}/bin"
  cat > "${@: -1}/bin/python" <<'EOF'
#!/usr/bin/env bash
printf '%s\n' "$@" > "$HOME/main_args"
echo "PYTHONUNBUFFERED=${PYTHONUNBUFFERED:-} cwd=$(basename "$PWD")" > "$HOME/main_env"
echo "step 1 loss 2.5 from $(basename "$HOME")"
exit "${FAKE_TRAIN_EXIT:-0}"
EOF
  chmod +x "${@: -1}/bin/python"
fi
"""


@pytest.mark.skipif(shutil.which("setsid") is None, reason="setsid (util-linux) is not installed")
def test_tpu_full_run_against_stand_in_gcloud(tmp_path):
    # The trainer fails with status 3: the script must report it and still tear down as asked.
    train_exit = 3
    # A minimal checkout, so the tarball holds just this script, requirements.txt and one file.
    repo = tmp_path / "repo"
    (repo / "launch").mkdir(parents=True)
    shutil.copy(TPU, repo / "launch" / "tpu_vm.sh")
    (repo / "requirements.txt").write_text(f"jax[cpu]=={JAX_PIN}\n")
    (repo / "lcl_jax").mkdir()
    (repo / "lcl_jax" / "main.py").write_text("# stand-in\n")
    fake_tpu = tmp_path / "tpu"
    bin_dir = tmp_path / "bin"
    _write_exe(bin_dir / "gcloud", FAKE_GCLOUD)
    for w in (0, 1):
        _write_exe(fake_tpu / f"worker{w}" / ".local" / "bin" / "uv", FAKE_UV)

    extra = ["--config.name=a b", "it's"]
    result = subprocess.run(
        ["bash", str(repo / "launch" / "tpu_vm.sh"), "--name=t1", f"--config={CONFIG}",
         f"--workdir={WORKDIR}", "--teardown", "--", *extra],
        capture_output=True, text=True, timeout=60,
        env=_clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_TPU=str(fake_tpu),
                       TMPDIR=str(tmp_path), FAKE_TRAIN_EXIT=str(train_exit)))
    assert result.returncode == train_exit, result.stdout + result.stderr

    for w in (0, 1):
        home = fake_tpu / f"worker{w}"
        assert (home / "lcl_jax" / "lcl_jax" / "main.py").exists(), "code copied to every worker"
        uv_log = (home / "uv.log").read_text()
        assert "-r lcl_jax/requirements.txt" in uv_log and f"jax[tpu]=={JAX_PIN}" in uv_log
        # Every argument arrives intact through gcloud ssh, nohup and bash -c.
        assert (home / "main_args").read_text().splitlines() == [
            "-m", "lcl_jax.main", f"--config={CONFIG}", f"--workdir={WORKDIR}", *extra]
        assert (home / "main_env").read_text().split() == ["PYTHONUNBUFFERED=1", "cwd=lcl_jax"]
        assert (home / "lcl_jax.exit").read_text().strip() == str(train_exit)
    assert "step 1 loss 2.5 from worker0" in result.stdout, "worker 0's log is streamed"
    assert not list(tmp_path.glob("lcl_jax-*.tar.gz")), "local tarball removed"
    calls = (fake_tpu / "calls.log").read_text().splitlines()
    assert calls[0].startswith("compute tpus tpu-vm create t1")
    assert any(c.startswith(f"storage cp lcl_jax.log {WORKDIR}/launch_logs/") for c in calls)
    assert calls[-1].startswith("compute tpus tpu-vm delete t1"), "teardown even after a failed run"


# ----------------------------------------------------------------------------- SLURM

@pytest.fixture
def tools(tmp_path):
    """A PATH holding only what gpu_slurm.sbatch uses, so a real scontrol is never found."""
    tools_dir = tmp_path / "tools"
    tools_dir.mkdir()
    for tool in ("bash", "dirname", "hostname", "seq", "sed", "head", "cat", "env", "printf", "basename"):
        found = shutil.which(tool)
        if found:
            (tools_dir / tool).symlink_to(found)
    return tools_dir


def _slurm(args, path, **env):
    return subprocess.run(["bash", str(SLURM), *args], capture_output=True, text=True, timeout=30,
                          env=_clean_env(PATH=os.pathsep.join(map(str, path)), **env))


FOUR_NODES = dict(SLURM_NTASKS="4", SLURM_NNODES="4", SLURM_JOB_NODELIST="node[01-04]", SLURM_GPUS_ON_NODE="8")


def test_slurm_dry_run_without_scontrol(tripwire, tools):
    bin_dir, marker = tripwire
    result = _slurm(["--dry_run", f"--config={CONFIG}", "--workdir=/shared/run", "--extra=--config.seed=1"],
                    [bin_dir, tools], **FOUR_NODES)
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "dry run executed: " + marker.read_text()
    cmds = _commands(result.stdout)
    srun = _one(cmds, "srun ")
    # The per-task command, as the task's shell will see it.
    task = shlex.split(srun)[-1]
    assert task == (f"exec python -m lcl_jax.main --config={CONFIG} --workdir=/shared/run "
                    "--coordinator_address=node01:12345 --num_processes=4 --process_id=$SLURM_PROCID "
                    "--config.seed=1")
    assert "--kill-on-bad-exit=1" in srun
    # One process per node: it must own all 8 GPUs, not JAX's SLURM default of GPU number SLURM_LOCALID.
    _one(cmds, "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7")
    _one(cmds, "export XLA_PYTHON_CLIENT_MEM_FRACTION=")


def test_slurm_dry_run_prefers_scontrol(tmp_path, tools):
    bin_dir = tmp_path / "bin"
    # Many hosts: the script must read scontrol's whole output (a SIGPIPE would fail under pipefail).
    _write_exe(bin_dir / "scontrol", 'for i in $(seq 17 5000); do echo "gpu-a$i"; done\n')
    result = _slurm(["--dry_run", "--config=c.py", "--workdir=/w"], [bin_dir, tools],
                    **{**FOUR_NODES, "SLURM_JOB_NODELIST": "gpu-a[17-18]", "LCL_COORDINATOR_PORT": "2222"})
    assert result.returncode == 0, result.stderr
    assert "--coordinator_address=gpu-a17:2222" in _one(_commands(result.stdout), "srun ")


def test_slurm_dry_run_from_environment_variables(tripwire, tools):
    bin_dir, marker = tripwire
    result = _slurm([], [bin_dir, tools], DRY_RUN="1", LCL_CONFIG=CONFIG, LCL_WORKDIR="/w",
                    LCL_EXTRA_ARGS="--config.a=1 --config.b=2", LCL_CODE_DIR="/code", **FOUR_NODES)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    cmds = _commands(result.stdout)
    assert "cd /code" in cmds
    assert f"--config={CONFIG} --workdir=/w " in _one(cmds, "srun ")
    assert "--process_id=$SLURM_PROCID --config.a=1 --config.b=2'" in _one(cmds, "srun ")


def test_slurm_dry_run_outside_slurm_uses_hostname(tripwire, tools):
    bin_dir, _ = tripwire
    result = _slurm(["--dry_run", "--config=c.py", "--workdir=/w"], [bin_dir, tools])
    assert result.returncode == 0, result.stderr
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    srun = _one(_commands(result.stdout), "srun ")
    assert f"--coordinator_address={host}:12345 --num_processes=1 --process_id=$SLURM_PROCID" in srun


def test_slurm_one_task_per_gpu_leaves_device_ids_to_jax(tools):
    result = _slurm(["--dry_run", "--config=c.py", "--workdir=/w"], [tools],
                    **{**FOUR_NODES, "SLURM_NTASKS": "32"})
    assert result.returncode == 0, result.stderr
    cmds = _commands(result.stdout)
    assert "--num_processes=32" in _one(cmds, "srun ")
    assert not [c for c in cmds if "JAX_LOCAL_DEVICE_IDS" in c]


def test_slurm_refuses_real_run_outside_slurm_and_missing_flags(tools):
    assert "sbatch" in _slurm(["--config=c.py", "--workdir=/w"], [tools]).stderr
    result = _slurm(["--dry_run", "--workdir=/w"], [tools])
    assert result.returncode != 0 and "--config" in result.stderr
    result = _slurm(["--dry_run", "--config=c.py"], [tools])
    assert result.returncode != 0 and "--workdir" in result.stderr


FAKE_SRUN = r"""
# Stand-in for srun: runs the step's command once per task, as SLURM would on each node.
args=("$@")
while [[ ${args[0]} == --* ]]; do args=("${args[@]:1}"); done
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=0 "${args[@]}" || exit $?
done
"""

FAKE_PYTHON = r"""
{ printf '%s\n' "$@"; echo "JAX_LOCAL_DEVICE_IDS=${JAX_LOCAL_DEVICE_IDS:-}"; echo "cwd=$PWD"; echo; } >> "$TRACE"
"""


def test_slurm_real_run_gives_each_task_its_process_id(tmp_path, tools):
    bin_dir = tmp_path / "bin"
    _write_exe(bin_dir / "srun", FAKE_SRUN)
    _write_exe(bin_dir / "python", FAKE_PYTHON)
    trace = tmp_path / "trace"
    result = _slurm([f"--config={CONFIG}", "--workdir=/shared/run", "--", "--config.name=a b"], [bin_dir, tools],
                    SLURM_JOB_ID="77", SLURM_SUBMIT_DIR=str(tmp_path), TRACE=str(trace), **FOUR_NODES)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [block.splitlines() for block in trace.read_text().strip().split("\n\n")]
    assert len(runs) == 4
    for pid, argv in enumerate(runs):
        assert argv == ["-m", "lcl_jax.main", f"--config={CONFIG}", "--workdir=/shared/run",
                        "--coordinator_address=node01:12345", "--num_processes=4", f"--process_id={pid}",
                        "--config.name=a b", "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7", f"cwd={tmp_path}"]


def _first_host(nodelist: str) -> str:
    """Calls the script's own scontrol-free parser."""
    script = SLURM.read_text()
    function = re.search(r"^first_host_of_nodelist\(\) \{.*?^\}", script, re.M | re.S).group(0)
    result = subprocess.run(["bash", "-c", f'{function}\nfirst_host_of_nodelist "$1"', "_", nodelist],
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


@pytest.mark.parametrize("nodelist, first", [
    ("node[01-04]", "node01"),
    ("node7", "node7"),
    ("node1,node2", "node1"),
    ("gpu[07-09,12],login1", "gpu07"),
    ("node[3,5-7]", "node3"),
    ("dgx-h200-[010-013]", "dgx-h200-010"),
    ("rack[1-2]-n[01-04]", "rack1-n01"),
    ("a[1-2],b[3-4]", "a1"),
])
def test_first_host_of_nodelist(nodelist, first):
    assert _first_host(nodelist) == first
