"""Order-preserving parallel map for image validation (decoding and re-encoding dominate a build's time).

Pillow releases the GIL while decoding and encoding, so threads give real speed-up without pickling documents.
Results come back in input order, so a build is deterministic whatever the number of workers.
"""
import collections
import concurrent.futures
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], num_workers: int = 1,
                max_in_flight: int | None = None) -> Iterator[R]:
  """Like map(fn, items), on `num_workers` threads, with at most `max_in_flight` items held in memory."""
  if num_workers <= 1:
    yield from map(fn, items)
    return
  max_in_flight = max_in_flight or 4 * num_workers
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= max_in_flight:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def documents(process: Callable[[T], R], records: Iterable[T], num_workers: int = 1, *, close=None) -> Iterator[R]:
  """A reader's documents: `process` on every record (ordered_map), the skipped ones (None) left out; `close` (an
  image store's) runs however the caller stops."""
  try:
    for document in ordered_map(process, records, num_workers):
      if document is not None:
        yield document
  finally:
    if close is not None:
      close()
