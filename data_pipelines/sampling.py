"""Randomness as pure functions of integers: the epoch order of a source, the mixture's choice of source for a row,
and the generators that build rows and augment images.

Nothing here keeps state between calls. The pipeline records only positions (epoch, block, row, mixture counter) and
recomputes every draw from them, which is what makes a resumed run's batches identical to an uninterrupted run's
without saving any buffer. numpy only, no tensorflow.
"""
import hashlib
import zlib

import numpy as np

_MASK64 = (1 << 64) - 1


def _key_ints(key) -> list[int]:
  """Key parts (ints >= 0 or str) -> non-negative ints; strings by CRC32 so a key never depends on Python's hash
  randomisation or on the order sources are listed in a config."""
  out = []
  for part in key:
    if isinstance(part, str):
      out.append(zlib.crc32(part.encode("utf-8")))
    else:
      part = int(part)
      if part < 0:
        raise ValueError(f"key parts must be >= 0, got {key}")
      out.append(part)
  return out


def generator(*key) -> np.random.Generator:
  """A numpy Generator determined by the key alone (e.g. ("rows", seed, source, epoch, block))."""
  return np.random.default_rng(np.random.SeedSequence(_key_ints(key)))


def uniform(*key) -> float:
  """One uniform draw in [0, 1) determined by the key alone: counter-based, no generator to carry.

  A hash rather than `generator(*key).random()`: it is called once per row and is ~20x cheaper.
  """
  digest = hashlib.blake2b(repr(_key_ints(key)).encode("ascii"), digest_size=8).digest()
  return (int.from_bytes(digest, "little") >> 11) / float(1 << 53)


def choose(weights, u: float) -> int:
  """Index i with probability weights[i] / sum(weights), for a uniform u in [0, 1)."""
  cumulative = np.cumsum(np.asarray(weights, np.float64))
  return min(int(np.searchsorted(cumulative, u * cumulative[-1], side="right")), len(cumulative) - 1)


def _mix(z: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser on uint64 arrays: a cheap, well-avalanched round function."""
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


class Permutation:
  """A pseudo-random bijection of range(n) evaluated per position, with no n-sized table.

  A table would be 0.8-1.6 GB per epoch for a 100M-document source; instead a balanced Feistel network permutes the
  smallest even power of two >= n, and values that land outside range(n) are sent through it again ("cycle
  walking"), which keeps the map a bijection of range(n). Six rounds of SplitMix64 are plenty for shuffling.
  """
  ROUNDS = 6

  def __init__(self, n: int, *key):
    if n < 1:
      raise ValueError(f"cannot permute {n} elements")
    self.n = n
    bits = max(2, (n - 1).bit_length())
    bits += bits % 2
    self._half = np.uint64(bits // 2)
    self._mask = np.uint64((1 << (bits // 2)) - 1)
    self._keys = generator("permutation", *key).integers(0, 1 << 63, size=self.ROUNDS, dtype=np.uint64)

  def _round_trip(self, x: np.ndarray) -> np.ndarray:
    left, right = x >> self._half, x & self._mask
    for k in self._keys:
      left, right = right, left ^ (_mix(right ^ k) & self._mask)
    return (left << self._half) | right

  def __call__(self, positions) -> np.ndarray:
    """int64 [...] positions in range(n) -> their elements, int64 [...]."""
    x = np.asarray(positions, np.int64)
    if x.size and (x.min() < 0 or x.max() >= self.n):
      raise IndexError(f"positions outside range({self.n})")
    out = self._round_trip(x.astype(np.uint64))
    outside = out >= np.uint64(self.n)
    while outside.any():  # at most ~4x the domain: a few passes in expectation
      out[outside] = self._round_trip(out[outside])
      outside = out >= np.uint64(self.n)
    return out.astype(np.int64)
