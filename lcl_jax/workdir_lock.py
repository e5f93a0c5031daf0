"""One trainer per workdir: a lock file `<workdir>/lock` that names its holder (host, pid, start time).

Two trainers writing checkpoints and metrics into the same workdir corrupt each other's runs silently, so the
second one is refused at start with a one-line `WorkdirLocked` message. A lock left by a dead process must never
block a restart:

- Local filesystem (a path without "://"): `fcntl.flock` on `<workdir>/lock`, held on an open fd for the process
  lifetime. The kernel drops it when the process dies (kill -9 included), so a local lock is never stale. The JSON
  in the file (host, pid, started, argv) is only there to name the holder in the message; it is left on release.
- Anything else (gs://, ...; no flock there): the JSON file itself is the lock, kept alive by a heartbeat that a
  daemon thread rewrites every `heartbeat_s`. A heartbeat older than `stale_after_s`, or a holder on this host
  whose pid is gone, is taken over with a warning; `force=True` (config `ckpt.force_unlock`) breaks any such lock
  (a local flock needs no override: only a live process can hold it). The
  heartbeat age compares the holder's clock with ours, so `stale_after_s` must also cover clock skew.

In a multi-host run only one process (process 0) should take the lock: on a shared filesystem the hosts of one
run would otherwise refuse each other.
"""
import atexit
import datetime
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Optional

from absl import logging
from etils import epath

LOCK_NAME = "lock"  # stable: <workdir>/lock, for both modes
FORCE_FLAG = "--config.ckpt.force_unlock=True"


class WorkdirLocked(RuntimeError):
  """Another trainer holds the workdir. str(e) is one line: the workdir, the holder, what to do."""

  def __init__(self, workdir: str, lock_path: str, holder: Optional[dict], detail: str = "", *,
               breakable: bool = True):
    self.workdir, self.lock_path, self.holder = workdir, lock_path, holder
    holder = holder or {}
    who = (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
           f"since {_display_time(holder.get('started'))}")
    # A local flock is held only by a live process, so there is nothing stale to break.
    what_to_do = (f"if that run is dead and its lock is stale, pass {FORCE_FLAG}" if breakable else
                  "that process is alive (the kernel holds its lock)")
    super().__init__(
        f"Workdir {workdir} is in use by another trainer: {who}{detail} (lock file {lock_path}). "
        f"Stop that run first, or use another --workdir; {what_to_do}.")


def _now() -> datetime.datetime:
  return datetime.datetime.now(datetime.timezone.utc)


def _iso(t: datetime.datetime) -> str:
  # Microseconds: a heartbeat every 0.1 s must still be seen to advance.
  return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: Any) -> Optional[datetime.datetime]:
  try:
    t = datetime.datetime.fromisoformat(str(value))
  except (TypeError, ValueError):
    return None
  return t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)


def _display_time(value: Any) -> str:
  t = _parse_time(value)
  return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else "?"


def _pid_alive(pid: Any) -> bool:
  """True unless `pid` is certainly gone (only meaningful for a pid on this host)."""
  try:
    pid = int(pid)
  except (TypeError, ValueError):
    return True
  if pid <= 0:
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # PermissionError: it exists, under another user
    return True
  return True


def _parse_holder(text: str) -> Optional[dict]:
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


class WorkdirLock:
  """A held workdir lock; `release()` (idempotent) or leave the `with` block to give it up."""

  def __init__(self, workdir: str, lock_path: epath.Path, mode: str, info: dict, *, fd: Optional[int] = None,
               heartbeat_s: float = 30.0):
    self.workdir, self.path, self.mode, self.info = workdir, lock_path, mode, info
    self._fd = fd
    self._heartbeat_s = heartbeat_s
    self._stop = threading.Event()
    self._write_lock = threading.Lock()  # no heartbeat write can land after release() deleted the file
    self._released = False
    self._thread: Optional[threading.Thread] = None
    if mode == "heartbeat":
      self._thread = threading.Thread(target=self._beat, name=f"workdir-lock-heartbeat:{workdir}", daemon=True)
      self._thread.start()
    atexit.register(self.release)  # a clean exit deletes a heartbeat lock at once instead of letting it go stale

  def _owned(self) -> bool:
    try:
      holder = _parse_holder(self.path.read_text())
    except FileNotFoundError:
      return False
    return bool(holder) and holder.get("token") == self.info["token"]

  def _beat(self) -> None:
    while not self._stop.wait(self._heartbeat_s):
      with self._write_lock:
        if self._stop.is_set():
          return
        try:
          if not self._owned():
            logging.error("Workdir lock %s is no longer ours (taken over or deleted); stopping its heartbeat.",
                          self.path)
            return
          self.info["heartbeat"] = _iso(_now())
          self.path.write_text(json.dumps(self.info))
        except Exception as e:  # pylint: disable=broad-except
          # A transient storage error must not kill the heartbeat; the next beat retries.
          logging.warning("Workdir lock heartbeat on %s failed: %s", self.path, e)

  def release(self) -> None:
    if self._released:
      return
    self._released = True
    atexit.unregister(self.release)
    if self.mode == "heartbeat":
      self._stop.set()
      with self._write_lock:
        try:
          if self._owned():
            self.path.unlink()
        except Exception as e:  # pylint: disable=broad-except
          logging.warning("Could not delete workdir lock %s: %s", self.path, e)
      if self._thread is not None:
        self._thread.join(timeout=10)
    elif self._fd is not None:
      try:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
      finally:
        os.close(self._fd)
        self._fd = None
    logging.info("Released workdir lock %s.", self.path)

  def __enter__(self) -> "WorkdirLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _new_info(heartbeat: bool) -> dict:
  now = _iso(_now())
  info = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "argv": list(sys.argv),
          "token": uuid.uuid4().hex}
  if heartbeat:
    info["heartbeat"] = now
  return info


def _acquire_flock(workdir: str, lock_path: epath.Path) -> WorkdirLock:
  fd = os.open(os.fspath(lock_path), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = None
    for _ in range(20):  # the holder may be between its truncate and its write
      holder = _parse_holder(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace"))
      if holder:
        break
      time.sleep(0.05)
    os.close(fd)
    raise WorkdirLocked(workdir, os.fspath(lock_path), holder, breakable=False) from None
  except BaseException:
    os.close(fd)
    raise
  info = _new_info(False)
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(info).encode(), 0)
  os.fsync(fd)
  logging.info("Took workdir lock %s (flock, host %s, pid %d).", lock_path, info["host"], info["pid"])
  return WorkdirLock(workdir, lock_path, "flock", info, fd=fd)


def _acquire_heartbeat(workdir: str, lock_path: epath.Path, stale_after_s: float, heartbeat_s: float,
                       force: bool) -> WorkdirLock:
  me = socket.gethostname()
  try:
    text = lock_path.read_text()
  except FileNotFoundError:
    text = None
  if text is not None:
    holder = _parse_holder(text)
    where = f"host {(holder or {}).get('host', '?')}, pid {(holder or {}).get('pid', '?')}"
    beat = _parse_time((holder or {}).get("heartbeat"))
    age = (_now() - beat).total_seconds() if beat else None
    if holder is None or age is None:
      logging.warning("Workdir lock %s is unreadable; taking it over.", lock_path)
    elif force:
      logging.warning("force_unlock: taking over workdir lock %s from %s (heartbeat %.0f s ago).",
                      lock_path, where, age)
    elif age >= stale_after_s:
      logging.warning("Taking over stale workdir lock %s from %s: its last heartbeat was %.0f s ago (> %g s).",
                      lock_path, where, age, stale_after_s)
    elif holder.get("host") == me and not _pid_alive(holder.get("pid")):
      logging.warning("Taking over workdir lock %s from %s: that process is gone.", lock_path, where)
    else:
      raise WorkdirLocked(workdir, os.fspath(lock_path), holder, f", last heartbeat {age:.0f} s ago")
  info = _new_info(True)
  lock_path.write_text(json.dumps(info))
  # Object stores give no atomic create-if-absent here, so two trainers starting together can both pass the check
  # above. Reading back catches the common case (the other write landed last); it is best-effort, which is why the
  # message tells users to run one trainer per workdir.
  holder = _parse_holder(lock_path.read_text())
  if not holder or holder.get("token") != info["token"]:
    raise WorkdirLocked(workdir, os.fspath(lock_path), holder, ", which started at the same moment")
  logging.info("Took workdir lock %s (heartbeat every %g s, host %s, pid %d).", lock_path, heartbeat_s,
               info["host"], info["pid"])
  return WorkdirLock(workdir, lock_path, "heartbeat", info, heartbeat_s=heartbeat_s)


def acquire(workdir: str, *, stale_after_s: float = 300.0, heartbeat_s: float = 30.0, force: bool = False,
            mode: str = "auto") -> WorkdirLock:
  """Takes `<workdir>/lock` or raises WorkdirLocked. Creates the workdir if missing.

  mode: "auto" (flock for a local path, heartbeat for a URL such as gs://), or "flock" / "heartbeat" to force one
  (tests run the heartbeat mode on a local directory). `force` is the override for a lock that must be broken now.
  """
  if mode == "auto":
    mode = "heartbeat" if "://" in str(workdir) else "flock"
  if mode not in ("flock", "heartbeat"):
    raise ValueError(f"mode must be 'auto', 'flock' or 'heartbeat', got {mode!r}")
  if mode == "heartbeat" and not 0 < heartbeat_s < stale_after_s:
    raise ValueError(f"need 0 < heartbeat_s ({heartbeat_s}) < stale_after_s ({stale_after_s})")
  root = epath.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  lock_path = root / LOCK_NAME
  if mode == "flock":
    return _acquire_flock(str(workdir), lock_path)
  return _acquire_heartbeat(str(workdir), lock_path, stale_after_s, heartbeat_s, force)
