"""Skip-and-count bookkeeping for dirty raw data, and the one path rule that keeps reads inside a root.

Web-scraped corpora always carry dirt (docs/formats.md, "Bad input"): the readers skip what they cannot use, count it
per reason, log only the first occurrence of each reason (a million identical warnings hide the one that matters), and
keep the good rest. Counts are kept per *unit* (what was skipped: a "document", an "image", a tar "member"), so the
build report can say both how many documents and how many images were lost and why.
"""
import collections
import threading

from absl import logging

DOCUMENT = "document"
IMAGE = "image"
MEMBER = "member"


class BadInputCounter:
  """Counts skipped inputs per reason; logs the first occurrence of each reason with where it happened.

  Thread-safe: the readers validate images on worker threads and all of them count into one counter.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._counts = collections.defaultdict(collections.Counter)  # unit -> reason -> n
    self._logged = set()                                         # reasons already logged

  def skip(self, reason: str, where: str = "", *, unit: str = DOCUMENT, n: int = 1) -> None:
    """Records that `n` inputs of kind `unit` were skipped for `reason` at `where` (a path, key or doc id)."""
    with self._lock:
      self._counts[unit][reason] += n
      first = reason not in self._logged
      self._logged.add(reason)
    if first:
      logging.warning("Skipping bad input (%s, %s) at %s; further %r are only counted.", reason, unit, where, reason)

  def counts(self) -> dict[str, int]:
    """reason -> number of skips, summed over units, keys sorted (stable JSON)."""
    total = collections.Counter()
    with self._lock:
      for per_reason in self._counts.values():
        total.update(per_reason)
    return dict(sorted(total.items()))

  def counts_by_unit(self) -> dict[str, dict[str, int]]:
    """unit -> reason -> number of skips, keys sorted."""
    with self._lock:
      return {unit: dict(sorted(per_reason.items())) for unit, per_reason in sorted(self._counts.items())
              if per_reason}

  def total(self, unit: str | None = None) -> int:
    """All skips, or those of one unit."""
    with self._lock:
      return sum(sum(c.values()) for u, c in self._counts.items() if unit is None or u == unit)

  def update(self, other: "BadInputCounter") -> None:
    """Adds another counter's counts (e.g. one per split or per worker) into this one."""
    by_unit = other.counts_by_unit()
    with other._lock:  # pylint: disable=protected-access
      logged = set(other._logged)  # pylint: disable=protected-access
    with self._lock:
      for unit, per_reason in by_unit.items():
        self._counts[unit].update(per_reason)
      self._logged |= logged


def safe_relpath(name) -> str | None:
  """The normalised relative form of `name` ("a/./b" -> "a/b", "a/../b" -> "b"), or None if it is not a safe one.

  Purely lexical and posix-style (the same rule for local paths, gs:// URLs and tar member names); never touches a
  filesystem. Refused: non-strings, empty names, NUL bytes, absolute names (`os.path.join(root, "/etc/x")` would
  return `/etc/x`), URLs (`gs://...`, `file:...`), Windows drive/UNC forms, `..` components that climb above the
  root, and names that resolve to the root itself. Symlinks are not resolved: the data root is trusted, the names
  inside the data are not.
  """
  if not isinstance(name, str) or not name or "\x00" in name:
    return None
  if name.startswith(("/", "\\")) or "://" in name or name.lower().startswith("file:"):
    return None
  if len(name) >= 2 and name[1] == ":" and name[0].isalpha():  # C:\x or C:/x
    return None
  parts = []
  for part in name.split("/"):
    if part in ("", "."):
      continue
    if part == "..":
      if not parts:
        return None
      parts.pop()
    else:
      parts.append(part)
  return "/".join(parts) or None


def safe_join(root: str, name) -> str | None:
  """`root/name` if `name` is a relative path that stays inside `root` (see safe_relpath), else None.

  The caller counts None as `unsafe_path` and opens nothing. Works for local roots and gs:// roots alike.
  """
  if not root:
    raise ValueError("safe_join needs a non-empty root.")
  rel = safe_relpath(name)
  if rel is None:
    return None
  return root.rstrip("/") + "/" + rel
