#!/usr/bin/env bash
# Launch lcl_jax pre-training on a Cloud TPU VM (one host or a whole pod slice).
#
#   launch/tpu_vm.sh --name=lcl-v5p --zone=us-east5-a --accelerator_type=v5p-256 --queued \
#     --config=configs/vitl14_laion_mmc4.py --workdir=gs://MY_BUCKET/runs/vitl14 --teardown
#
# Add --dry_run to print every command ("+ " prefix, one per line) without running any.
# Rerunning the same command resumes the run: the trainer restores the latest checkpoint in --workdir.
# See launch/README.md.
set -euo pipefail

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "tpu_vm.sh: needs bash >= 4.4 (macOS: brew install bash)" >&2
  exit 2
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# Paths on every worker, relative to the login directory. The venv lives outside the code
# directory so that copying a fresh tree does not throw away the installed packages.
readonly CODE_DIR=lcl_jax
readonly VENV_DIR=lcl_jax_venv
readonly LOG_FILE=lcl_jax.log   # the trainer's stdout/stderr
readonly PID_FILE=lcl_jax.pid   # process group of the running trainer
readonly EXIT_FILE=lcl_jax.exit # the trainer's exit status, written when it ends
readonly POLL_SECONDS=30

NAME=lcl-jax
ZONE=us-east5-a
PROJECT=""
ACCELERATOR_TYPE=v5p-8
RUNTIME_VERSION=v2-alpha-tpuv5
QUEUED=0
REUSE=0
SOURCE=copy
REPO_URL=""
BRANCH=main
CONFIG=""
WORKDIR=""
EXTRA=()
LOC=()
TEARDOWN=0
DRY_RUN=0
PYTHON_VERSION=3.11
JAX_VERSION=""

usage() {
  cat <<EOF
Usage: launch/tpu_vm.sh --config=CONFIG --workdir=gs://BUCKET/DIR [options] [-- MAIN_ARGS...]

Creates (or reuses) a TPU VM, puts the code on every worker, installs it, starts
'python -m lcl_jax.main' on all workers, streams worker 0's log, optionally tears down.

Options (--flag=value or --flag value):
  --name=NAME               TPU VM (and queued resource) name            [default: $NAME]
  --zone=ZONE               zone                                         [default: $ZONE]
  --project=PROJECT         GCP project                                  [default: gcloud's configured project]
  --accelerator_type=TYPE   e.g. v5p-8, v5p-256, v6e-64                  [default: $ACCELERATOR_TYPE]
  --runtime_version=VER     TPU software version                         [default: $RUNTIME_VERSION]
  --queued                  request a queued resource instead of a plain create (waits for ACTIVE)
  --reuse                   skip creation when the VM / queued resource already exists
  --source=copy|git         copy: scp a tarball of this working tree      [default: $SOURCE]
                            git:  git clone --branch BRANCH REPO on every worker
  --repo=URL                repository to clone (required with --source=git)
  --branch=BRANCH           branch or tag to clone                       [default: $BRANCH]
  --config=CONFIG           e.g. configs/vitl14_laion_mmc4.py or configs/vitb16_mmc4.py:runlocal (required)
  --workdir=gs://...        checkpoints and metrics; must be on GCS so every worker sees it (required)
  --extra='ARGS'            extra arguments for lcl_jax.main, split on spaces, e.g. '--config.total_steps=1000'
                            (arguments after '--' are passed through as they are, spaces included)
  --python_version=VER      Python of the venv created on the workers     [default: $PYTHON_VERSION]
  --jax_version=VER         jax[tpu] version                              [default: the jax pin in requirements.txt]
  --teardown                delete the VM / queued resource once training has finished
  --dry_run                 print every command, one per line prefixed '+ ', run nothing, exit 0
  -h, --help                this message
EOF
}

die() {
  echo "tpu_vm.sh: error: $*" >&2
  exit 2
}

# Progress notes and printed commands go to fd 3 (the script's stdout, opened in main), so they
# still reach the terminal from inside $(...) captures.
note() {
  echo "# $*" >&3
}

# Shell-quote each argument, so printed commands can be pasted back into a shell and remote
# command strings survive the trip through ssh intact. Plain words stay unquoted, and only the
# value of a --flag=value is quoted, for readability.
quote() {
  local out=() arg flag sq="'" esc="'\\''"
  for arg in "$@"; do
    flag=""
    if [[ $arg =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
      flag=${BASH_REMATCH[1]} arg=${BASH_REMATCH[2]}
    fi
    if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=("$flag$arg")
    else
      out+=("$flag'${arg//"$sq"/"$esc"}'")
    fi
  done
  printf '%s\n' "${out[*]}"
}

show() {
  printf '+ %s\n' "$(quote "$@")" >&3
}

# Every command with a side effect goes through here, so --dry_run can print it instead.
run() {
  show "$@"
  if ((!DRY_RUN)); then
    "$@"
  fi
}

# ----------------------------------------------------------------------------- arguments

parse_args() {
  local flag value words
  while (($#)); do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --) shift; EXTRA+=("$@"); break ;;
      --queued) QUEUED=1; shift; continue ;;
      --reuse) REUSE=1; shift; continue ;;
      --teardown) TEARDOWN=1; shift; continue ;;
      --dry_run) DRY_RUN=1; shift; continue ;;
      --*=*) flag=${1%%=*}; value=${1#*=}; shift ;;
      --*) (($# >= 2)) || die "$1 needs a value (see --help)"; flag=$1; value=$2; shift 2 ;;
      *) die "unexpected argument '$1' (see --help)" ;;
    esac
    case $flag in
      --name) NAME=$value ;;
      --zone) ZONE=$value ;;
      --project) PROJECT=$value ;;
      --accelerator_type) ACCELERATOR_TYPE=$value ;;
      --runtime_version) RUNTIME_VERSION=$value ;;
      --source) SOURCE=$value ;;
      --repo) REPO_URL=$value ;;
      --branch) BRANCH=$value ;;
      --config) CONFIG=$value ;;
      --workdir) WORKDIR=$value ;;
      --extra) read -r -a words <<<"$value"; EXTRA+=("${words[@]}") ;;
      --python_version) PYTHON_VERSION=$value ;;
      --jax_version) JAX_VERSION=$value ;;
      *) die "unknown flag $flag (see --help)" ;;
    esac
  done
}

# One source of truth for the jax version: the pin in requirements.txt.
jax_version_from_requirements() {
  awk -F'==' '/^jax(\[[^]]*\])?==/ { split($2, v, /[[:space:];#]/); print v[1]; exit }' \
    "$REPO_ROOT/requirements.txt" 2>/dev/null || true
}

validate_args() {
  [[ -n $CONFIG ]] || die "--config is required, e.g. --config=configs/vitb16_mmc4.py"
  [[ -n $WORKDIR ]] || die "--workdir is required, e.g. --workdir=gs://MY_BUCKET/runs/NAME"
  # Every worker writes checkpoints and reads them back on resume: a local path would give
  # each host its own, diverging copy, and it dies with the VM.
  [[ $WORKDIR == gs://?* ]] || die "--workdir must be a gs:// path on TPU VMs (got '$WORKDIR')"
  [[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name must be lowercase letters, digits and '-' (got '$NAME')"
  case $SOURCE in
    copy) ;;
    git) [[ -n $REPO_URL ]] || die "--source=git needs --repo=URL" ;;
    *) die "--source must be copy or git (got '$SOURCE')" ;;
  esac
  [[ -n $JAX_VERSION ]] || JAX_VERSION=$(jax_version_from_requirements)
  [[ -n $JAX_VERSION ]] || die "no jax pin found in requirements.txt; pass --jax_version"
  LOC=(--zone="$ZONE")
  [[ -z $PROJECT ]] || LOC+=(--project="$PROJECT")
}

# ----------------------------------------------------------------------------- gcloud helpers

# gcloud compute tpus tpu-vm VERB TARGET [ARGS...], with --zone/--project after the target.
tpu_vm() {
  run gcloud compute tpus tpu-vm "$1" "$2" "${LOC[@]}" "${@:3}"
}

queued_resource() {
  run gcloud compute tpus queued-resources "$1" "$2" "${LOC[@]}" "${@:3}"
}

# Run one shell command line on every worker at once.
on_all_workers() {
  tpu_vm ssh "$NAME" --worker=all --command="$1"
}

# The VM's (or queued resource's) state, e.g. READY / ACTIVE; empty when it does not exist.
# Read-only, but still printed (and skipped) in a dry run.
current_state() {
  local cmd=(gcloud compute tpus tpu-vm describe "$NAME" "${LOC[@]}" --format="value(state)")
  if ((QUEUED)); then
    cmd=(gcloud compute tpus queued-resources describe "$NAME" "${LOC[@]}" --format="value(state.state)")
  fi
  show "${cmd[@]}"
  if ((!DRY_RUN)); then
    "${cmd[@]}" 2>/dev/null || true
  fi
}

# ----------------------------------------------------------------------------- steps

resource_exists() {
  local state
  state=$(current_state)
  if ((DRY_RUN)); then
    note "dry run: assuming $NAME does not exist yet"
    return 1
  fi
  [[ -n $state ]]
}

create_resource() {
  if ((QUEUED)); then
    queued_resource create "$NAME" --node-id="$NAME" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION"
  else
    tpu_vm create "$NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
  fi
}

# A queued resource may wait hours for capacity, so this polls without a deadline; a plain
# create returns once the VM exists, and the READY check only matters with --reuse.
wait_until_ready() {
  local want=READY state="" last=""
  if ((QUEUED)); then want=ACTIVE; fi
  if ((DRY_RUN)); then
    current_state
    note "dry run: would poll every ${POLL_SECONDS}s until the state is $want"
    return 0
  fi
  state=$(current_state)
  while [[ $state != "$want" ]]; do
    case $state in
      FAILED | SUSPENDED | SUSPENDING | DELETING | TERMINATED | PREEMPTED | STOPPED)
        die "$NAME is $state, not $want; delete it or pick another --name" ;;
    esac
    [[ $state == "$last" ]] || note "$NAME is ${state:-not visible yet}; waiting for $want"
    last=$state
    sleep "$POLL_SECONDS"
    state=$(current_state 3>/dev/null)
  done
  note "$NAME is $want"
}

create_or_reuse() {
  if ((REUSE)) && resource_exists; then
    note "reusing $NAME"
  else
    create_resource
  fi
  wait_until_ready
}

# A rerun on a reused VM would otherwise fight the previous trainer for the TPU chips.
# SIGTERM makes the trainer save a checkpoint; the new run resumes from it.
stop_previous_run() {
  local pgid="\"-\$(cat $PID_FILE)\""
  on_all_workers "if [ -f $PID_FILE ] && kill -0 -- $pgid 2>/dev/null; then kill -TERM -- $pgid; while kill -0 -- $pgid 2>/dev/null; do sleep 2; done; fi"
}

copy_working_tree() {
  local tarball="${TMPDIR:-/tmp}/lcl_jax-$NAME-$$.tar.gz"
  run tar -czf "$tarball" --exclude=.git --exclude=__pycache__ --exclude='*.pyc' \
    --exclude=.venv --exclude=venv -C "$REPO_ROOT" .
  tpu_vm scp "$tarball" "$NAME:$CODE_DIR.tar.gz" --worker=all
  run rm -f "$tarball"
  on_all_workers "rm -rf $CODE_DIR && mkdir -p $CODE_DIR && tar -xzf $CODE_DIR.tar.gz -C $CODE_DIR && rm -f $CODE_DIR.tar.gz"
}

clone_repo() {
  on_all_workers "rm -rf $CODE_DIR && git clone --depth=1 --branch=$(quote "$BRANCH") $(quote "$REPO_URL") $CODE_DIR"
}

# TPU images ship an older system Python than requirements.txt needs, so uv provides a
# venv with its own interpreter. CPU jax from requirements.txt is then swapped for jax[tpu].
install_requirements() {
  local uv="\"\$HOME/.local/bin/uv\""
  local py="$VENV_DIR/bin/python"
  on_all_workers "{ [ -x $uv ] || curl -LsSf https://astral.sh/uv/install.sh | env UV_INSTALL_DIR=\"\$HOME/.local/bin\" UV_NO_MODIFY_PATH=1 sh; } && { [ -x $py ] || $uv venv --python $(quote "$PYTHON_VERSION") $VENV_DIR; } && $uv pip install --python $py -r $CODE_DIR/requirements.txt && $uv pip install --python $py -U $(quote "jax[tpu]==$JAX_VERSION")"
}

# nohup + setsid: the trainer outlives the ssh session, and its process group id is written
# to PID_FILE so a later run can signal the trainer and its wrapper together.
start_training() {
  local main_cmd=(PYTHONUNBUFFERED=1 "../$VENV_DIR/bin/python" -m lcl_jax.main
    --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]}")
  local job
  job="$(quote "${main_cmd[@]}"); echo \$? > ../$EXIT_FILE"
  on_all_workers "cd $CODE_DIR && rm -f ../$EXIT_FILE && { nohup setsid bash -c $(quote "$job") > ../$LOG_FILE 2>&1 < /dev/null & echo \$! > ../$PID_FILE; }"
}

# Follows worker 0's log (the trainer logs from process 0) until the trainer exits.
# Ctrl-C stops the stream and this script, never the training.
stream_logs() {
  tpu_vm ssh "$NAME" --worker=0 --command="tail -n +1 -F --pid=\"\$(cat $PID_FILE)\" $LOG_FILE"
}

# Prints the trainer's exit status, or nothing while it is still running (or unreachable).
training_exit_status() {
  local status
  local cmd=(gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker=0 --command="cat $EXIT_FILE 2>/dev/null")
  show "${cmd[@]}"
  if ((DRY_RUN)); then
    echo 0
    return 0
  fi
  status=$("${cmd[@]}" 2>/dev/null | tail -n 1) || true
  if [[ $status =~ ^[0-9]+$ ]]; then
    echo "$status"
  fi
}

# The log file lives on the VM; keep a copy next to the checkpoints before the VM can go away.
save_logs() {
  on_all_workers "gcloud storage cp $LOG_FILE $(quote "$WORKDIR")/launch_logs/\"\$(hostname).log\" || true"
}

teardown() {
  if ((QUEUED)); then
    # --force deletes the TPU node together with its queued resource.
    queued_resource delete "$NAME" --force --quiet
  else
    tpu_vm delete "$NAME" --quiet
  fi
}

main() {
  exec 3>&1
  parse_args "$@"
  validate_args
  ((!DRY_RUN)) || note "dry run: printing commands, running none"

  create_or_reuse
  stop_previous_run
  if [[ $SOURCE == copy ]]; then copy_working_tree; else clone_repo; fi
  install_requirements
  start_training
  stream_logs || true

  local status
  status=$(training_exit_status)
  if [[ -z $status ]]; then
    note "training is still running on $NAME (or worker 0 is unreachable): not tearing down."
    note "follow it again with: $(quote gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker=0 --command="tail -F $LOG_FILE")"
    exit 1
  fi
  ((DRY_RUN)) || note "training exited with status $status"
  save_logs
  ((!TEARDOWN)) || teardown
  exit "$status"
}

main "$@"
