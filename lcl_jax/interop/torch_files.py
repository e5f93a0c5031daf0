"""PyTorch checkpoint files read and written with numpy alone: no torch import, and no pickle that can run code.

`.pt` / `.pth` / `.bin` (torch.save's zip format, torch >= 1.6): a zip holding `<name>/data.pkl`, a pickle whose
tensors point at raw little-endian storages `<name>/data/<key>`. The pickle is read by an unpickler that resolves
only the globals a state dict needs (tensor and parameter rebuilds, storage types, OrderedDict) and refuses any other
with CheckpointFormatError before anything runs: a pickle that would call os.system or import a module never does.
`write_torch_zip` writes the same format (a state dict's pickle emitted opcode by opcode, so no torch class has to
exist here), which `torch.load(..., weights_only=True)` reads: the authors' open_clip loads only such files.

`.safetensors`: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the
bytes. Read and written here rather than with the `safetensors` package: its numpy API has no bfloat16, which
checkpoints use, and the format is a header and raw bytes. bfloat16 tensors come back as ml_dtypes.bfloat16 (jax's
own numpy dtype).
"""
import collections
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Mapping

import ml_dtypes
import numpy as np


class CheckpointFormatError(ValueError):
  """The file is not a checkpoint we can read safely; the message says what was found and what to do."""


# torch storage classes (pickled by name) -> numpy dtype.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class _StorageType:
  def __init__(self, name):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2: a strided view of a storage, copied out as a plain C-ordered array."""
  del unused  # requires_grad, backward hooks, metadata
  itemsize = storage.dtype.itemsize
  if not size:
    return np.array(storage[offset])  # a 0-d array, not a numpy scalar
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride), writeable=False)
  return np.ascontiguousarray(view)


def _rebuild_parameter(data, *unused):
  del unused
  return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
  """Resolves _ALLOWED globals to numpy stand-ins and storages to arrays read from the zip; nothing else."""

  def __init__(self, data, read_record, path):
    super().__init__(data)
    self._read, self._path, self._storages = read_record, path, {}

  def find_class(self, module, name):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise CheckpointFormatError(
          f"{self._path}: the pickle asks for {module}.{name}, which a state dict never needs; refused without "
          "running it. Re-save the weights alone (torch.save(model.state_dict(), ...) or safetensors).") from None

  def persistent_load(self, pid):
    kind, storage_type, key, _location, numel = pid
    if kind != "storage" or not isinstance(storage_type, _StorageType):
      raise CheckpointFormatError(f"{self._path}: unexpected persistent id {pid!r}.")
    if key not in self._storages:
      raw = self._read(f"data/{key}")
      self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"), count=numel)
    return self._storages[key]


def read_torch_zip(path: str):
  """torch.save's zip format -> the pickled object, tensors as numpy arrays (no torch, no code run)."""
  if not zipfile.is_zipfile(path):
    raise CheckpointFormatError(f"{path}: not a zip archive. Files from torch < 1.6 (legacy format) are not "
                                "read; re-save with a current torch or convert to safetensors.")
  with zipfile.ZipFile(path) as z:
    pickles = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise CheckpointFormatError(f"{path}: expected one data.pkl in the archive, found {pickles}.")
    prefix = pickles[0][:-len("data.pkl")]
    order = z.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in z.namelist() else "little"
    if order != "little":
      raise CheckpointFormatError(f"{path}: big-endian storages are not supported.")
    read = lambda name: z.read(prefix + name)
    try:
      return _Unpickler(io.BytesIO(z.read(pickles[0])), read, path).load()
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as e:
      if isinstance(e, CheckpointFormatError):
        raise
      raise CheckpointFormatError(f"{path}: unreadable pickle ({type(e).__name__}: {e}).") from None


def read_safetensors(path: str) -> dict:
  with open(path, "rb") as f:
    (size,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(size))
    body = f.read()
  out = {}
  for name, spec in header.items():
    if name == "__metadata__":
      continue
    if spec["dtype"] not in _SAFETENSORS_DTYPES:
      raise CheckpointFormatError(f"{path}: tensor {name!r} has dtype {spec['dtype']}, not one of "
                                  f"{sorted(_SAFETENSORS_DTYPES)}.")
    start, end = spec["data_offsets"]
    dtype = np.dtype(_SAFETENSORS_DTYPES[spec["dtype"]]).newbyteorder("<")
    out[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(spec["shape"]).copy()
  return out


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] = None) -> None:
  """Tensors in name order, each C-contiguous little-endian; torch's `safetensors.torch.load_file` reads it."""
  names = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    array = np.asarray(tensors[name], order="C")  # (ascontiguousarray would turn a 0-d scalar into shape [1])
    if array.dtype not in names:
      raise ValueError(f"tensor {name!r}: dtype {array.dtype} has no safetensors name")
    data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    header[name] = dict(dtype=names[array.dtype], shape=list(array.shape), data_offsets=[offset, offset + len(data)])
    chunks.append(data)
    offset += len(data)
  if metadata:
    header["__metadata__"] = dict(metadata)
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob)
    for chunk in chunks:
      f.write(chunk)
  os.replace(tmp, path)


def _pickle_int(i: int) -> bytes:
  if -2 ** 31 <= i < 2 ** 31:
    return b"J" + struct.pack("<i", i)                                  # BININT
  enc = pickle.encode_long(i)
  return b"\x8a" + bytes([len(enc)]) + enc                             # LONG1


def _pickle_str(s: str) -> bytes:
  b = s.encode()
  return b"X" + struct.pack("<I", len(b)) + b                           # BINUNICODE


def _pickle_global(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode()                         # GLOBAL


def _state_dict_pickle(entries) -> bytes:
  """Protocol-2 pickle of OrderedDict{name: _rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())},
  storages as persistent ids ("storage", torch.<Type>Storage, key, "cpu", numel), as torch.save writes them."""
  empty_ordered_dict = _pickle_global("collections", "OrderedDict") + b")R"   # EMPTY_TUPLE REDUCE
  out = [b"\x80\x02", empty_ordered_dict, b"("]                          # PROTO 2, the dict, MARK
  for name, storage_type, key, shape, numel in entries:
    stride = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape))]
    out += [_pickle_str(name), _pickle_global("torch._utils", "_rebuild_tensor_v2"), b"(",
            b"(", _pickle_str("storage"), _pickle_global("torch", storage_type), _pickle_str(key),
            _pickle_str("cpu"), _pickle_int(numel), b"tQ",             # TUPLE BINPERSID
            _pickle_int(0), b"(", *map(_pickle_int, shape), b"t", b"(", *map(_pickle_int, stride), b"t",
            b"\x89", empty_ordered_dict, b"tR"]                        # NEWFALSE, hooks; TUPLE REDUCE
  out.append(b"u.")                                                     # SETITEMS STOP
  return b"".join(out)


def write_torch_zip(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  """A state dict in torch.save's zip format (one storage per tensor, C order, little-endian), without torch."""
  types = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items()}
  root = os.path.splitext(os.path.basename(path))[0] or "archive"
  entries, storages = [], []
  for i, name in enumerate(sorted(tensors)):
    array = np.asarray(tensors[name], order="C")
    if array.dtype not in types:
      raise ValueError(f"tensor {name!r}: dtype {array.dtype} has no torch storage type")
    entries.append((name, types[array.dtype], str(i), list(array.shape), int(array.size)))
    storages.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
  tmp = f"{path}.tmp"
  with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
    z.writestr(f"{root}/data.pkl", _state_dict_pickle(entries))
    z.writestr(f"{root}/byteorder", "little")
    for i, data in enumerate(storages):
      z.writestr(f"{root}/data/{i}", data)
    z.writestr(f"{root}/version", "3\n")
  os.replace(tmp, path)


def read_state_dict(path: str) -> dict:
  """A checkpoint file -> {name: np.ndarray}. A training checkpoint's {"state_dict": ...} (open_clip's) is unwrapped;
  a `module.` prefix (DistributedDataParallel) is dropped."""
  if path.endswith(".safetensors"):
    state = read_safetensors(path)
  else:
    state = read_torch_zip(path)
    if isinstance(state, dict) and "state_dict" in state:
      state = state["state_dict"]
  if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
    raise CheckpointFormatError(f"{path}: expected a state dict of tensors, found {type(state).__name__}.")
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return dict(state)
