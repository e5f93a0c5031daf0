"""Workdir lock: a second trainer is refused with a one-line message naming the holder; a dead holder never blocks."""
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from lcl_jax import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = socket.gethostname()


def _env() -> dict:
  return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


TRY_ACQUIRE = """
import sys
from lcl_jax import workdir_lock
try:
  workdir_lock.acquire(sys.argv[1], mode="flock").release()
except workdir_lock.WorkdirLocked as e:
  print("LOCKED " + str(e))
  sys.exit(3)
print("ACQUIRED")
"""


def _try_in_other_process(workdir) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", TRY_ACQUIRE, str(workdir)], cwd=REPO, env=_env(), text=True,
                        capture_output=True, timeout=120, check=False)


def test_flock_refuses_second_process_until_released(tmp_path):
  workdir = tmp_path / "run"  # does not exist yet: acquire creates it
  lock = workdir_lock.acquire(str(workdir), mode="flock")
  assert (workdir / "lock").exists()
  assert json.loads((workdir / "lock").read_text())["pid"] == os.getpid()

  proc = _try_in_other_process(workdir)
  assert proc.returncode == 3, proc.stdout + proc.stderr
  message = proc.stdout.strip()
  assert "\n" not in message
  assert f"pid {os.getpid()}" in message and f"host {HOST}" in message
  assert str(workdir) in message and "that process is alive" in message

  lock.release()
  lock.release()  # idempotent
  proc = _try_in_other_process(workdir)
  assert proc.returncode == 0 and "ACQUIRED" in proc.stdout, proc.stdout + proc.stderr


def test_flock_second_acquire_in_same_process_refused(tmp_path):
  with workdir_lock.acquire(str(tmp_path), mode="flock"):
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()}"):
      workdir_lock.acquire(str(tmp_path), mode="flock")
  workdir_lock.acquire(str(tmp_path), mode="flock").release()  # the `with` released it


def test_flock_holder_killed_with_sigkill_does_not_block(tmp_path):
  code = textwrap.dedent("""
      import sys, time
      from lcl_jax import workdir_lock
      lock = workdir_lock.acquire(sys.argv[1], mode="flock")
      print("locked", flush=True)
      time.sleep(600)
      """)
  holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    line = holder.stdout.readline()
    assert line.strip() == "locked", line + holder.stderr.read()
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {holder.pid}"):  # really held while it lives
      workdir_lock.acquire(str(tmp_path), mode="flock")
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    holder.stdout.close()
    holder.stderr.close()
  assert holder.returncode == -signal.SIGKILL
  lock = workdir_lock.acquire(str(tmp_path), mode="flock")
  assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
  lock.release()


# ------------------------------------------------------------------ heartbeat mode, on a local directory


def _iso(seconds_ago: float) -> str:
  t = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds_ago)
  return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_holder(workdir, *, host=HOST, pid, heartbeat_ago=0.0):
  holder = {"host": host, "pid": pid, "started": _iso(3600), "heartbeat": _iso(heartbeat_ago), "token": "theirs"}
  (workdir / "lock").write_text(json.dumps(holder))
  return holder


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait(timeout=60)
  return proc.pid


def _acquire_hb(workdir, **kwargs):
  return workdir_lock.acquire(str(workdir), mode="heartbeat", stale_after_s=60.0, heartbeat_s=30.0, **kwargs)


def _lock_content(workdir) -> dict:
  return json.loads((workdir / "lock").read_text())


def test_heartbeat_fresh_lock_of_live_pid_refuses(tmp_path):
  live = os.getppid()  # alive, and not this process
  holder = _write_holder(tmp_path, pid=live)
  with pytest.raises(workdir_lock.WorkdirLocked) as e:
    _acquire_hb(tmp_path)
  assert "\n" not in str(e.value) and f"pid {live}" in str(e.value) and f"host {HOST}" in str(e.value)
  assert _lock_content(tmp_path) == holder  # left alone

  _write_holder(tmp_path, host="some-other-host", pid=_dead_pid())  # a pid on another host is never probed
  with pytest.raises(workdir_lock.WorkdirLocked, match="host some-other-host"):
    _acquire_hb(tmp_path)


def test_heartbeat_second_acquire_in_same_process_refused(tmp_path):
  with _acquire_hb(tmp_path):
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()}"):
      _acquire_hb(tmp_path)


def test_heartbeat_stale_lock_is_taken_over_with_warning(tmp_path, monkeypatch):
  warnings = []
  monkeypatch.setattr(workdir_lock.logging, "warning", lambda msg, *a: warnings.append(msg % a))
  _write_holder(tmp_path, host="some-other-host", pid=123, heartbeat_ago=3600)
  lock = _acquire_hb(tmp_path)
  assert _lock_content(tmp_path)["pid"] == os.getpid()
  assert any("some-other-host" in w and "pid 123" in w for w in warnings), warnings
  lock.release()


def test_heartbeat_lock_of_dead_pid_on_this_host_is_taken_over(tmp_path):
  _write_holder(tmp_path, pid=_dead_pid(), heartbeat_ago=0)
  lock = _acquire_hb(tmp_path)
  assert _lock_content(tmp_path)["pid"] == os.getpid()
  lock.release()


def test_heartbeat_force_takes_over_a_fresh_lock(tmp_path):
  _write_holder(tmp_path, pid=os.getppid(), heartbeat_ago=0)
  lock = _acquire_hb(tmp_path, force=True)
  assert _lock_content(tmp_path)["pid"] == os.getpid()
  lock.release()


def test_heartbeat_release_deletes_only_its_own_file(tmp_path):
  lock = _acquire_hb(tmp_path)
  content = _lock_content(tmp_path)
  assert content["host"] == HOST and content["pid"] == os.getpid() and content["argv"] == sys.argv
  lock.release()
  assert not (tmp_path / "lock").exists()
  lock.release()  # idempotent

  lock = _acquire_hb(tmp_path)
  theirs = _write_holder(tmp_path, pid=os.getppid())  # someone broke our lock with force_unlock
  lock.release()
  assert _lock_content(tmp_path) == theirs


def test_heartbeat_thread_advances_heartbeat(tmp_path):
  lock = workdir_lock.acquire(str(tmp_path), mode="heartbeat", stale_after_s=60.0, heartbeat_s=0.1)
  try:
    first = _lock_content(tmp_path)["heartbeat"]
    deadline = time.monotonic() + 60
    while True:
      try:
        content = _lock_content(tmp_path)
      except ValueError:  # caught between the heartbeat's truncate and its write
        content = {}
      if content.get("heartbeat", first) > first:  # same fixed-width UTC format: string order is time order
        break
      assert time.monotonic() < deadline, "heartbeat never advanced"
      time.sleep(0.05)
    assert content["started"] == _lock_content(tmp_path)["started"] and content["pid"] == os.getpid()
  finally:
    lock.release()
  assert not (tmp_path / "lock").exists()


def test_auto_mode_picks_flock_for_local_paths(tmp_path):
  with workdir_lock.acquire(str(tmp_path)) as lock:
    assert lock.mode == "flock"
