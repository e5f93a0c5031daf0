"""The collectives of an SPMD program, read from HLO text: what each one moves, over which mesh axes, how many times a
step, and whether it carries a parameter or a gradient at full or at shard size.

Which HLO to read. XLA's SPMD partitioner never writes a reduce-scatter for a gradient: it all-reduces the partial sums
and keeps this device's part with a dynamic-slice. GPU and TPU compilers turn that pair into a reduce-scatter (XLA's
ReduceScatterCreator; AllReduceSplitter first when the all-reduce spans more devices than the slice is cut for, e.g.
data x fsdp for a parameter split over fsdp only: a reduce-scatter over fsdp, then an all-reduce of the slice over
data). The CPU compiler does neither, and widens bfloat16 all-reduces to float32, so the CPU executable's HLO
overstates what an accelerator moves. `collectives` reads the partitioner's output (XLA dumps it after the pass
named PARTITIONER_PASS) and applies those two rewrites where the slicing allows them: that is the accelerator's
program.

Bytes. `wire_bytes` is what one device sends per execution with bandwidth-optimal (ring) algorithms over a group of
g devices: all-gather and reduce-scatter (g - 1) / g of the whole buffer, all-reduce twice that, all-to-all
(g - 1) / g of its buffer, collective-permute its buffer.
"""
import collections
import dataclasses
import itertools
import math
import re
from typing import Mapping, Optional, Sequence

import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
PARTITIONER_PASS = "spmd-partitioning"
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
               "f64": 8, "s64": 8, "u64": 8}
# Ops that pass a value through unchanged in content between an all-reduce and the dynamic-slice that cuts it (XLA's
# matcher allows a reshape there).
_PASS_THROUGH = ("reshape", "bitcast")


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  opcode: str
  shapes: tuple      # ((dtype, dims), ...) of the result, tuple elements in order
  operands: tuple    # operand instruction names
  attrs: str         # the text after the operand list
  literal: str = ""  # a constant's value text


@dataclasses.dataclass(frozen=True)
class Computation:
  name: str
  instructions: dict  # name -> Instruction, in text order


@dataclasses.dataclass(frozen=True)
class Collective:
  name: str
  kind: str            # as the accelerator runs it (see the module docstring)
  shapes: tuple        # per-device result shapes ((dtype, dims), ...)
  group: int           # devices per group
  axes: Optional[tuple]  # mesh axes each group spans; None if not a product of mesh axes or no mesh was given
  runs: int            # executions per step: trip counts of the enclosing loops multiplied in
  static_runs: bool    # False if an enclosing loop's trip count is only known at run time (then counted once)
  source: str = ""     # how it reads in the HLO when the rewrite changed it: "all-reduce + dynamic-slice"
  param: str = ""      # for an all-gather of a program input: that input's name, e.g. "state.params['vit']..."

  @property
  def bytes(self) -> int:
    return sum(shape_bytes(s) for s in self.shapes)

  @property
  def wire_bytes(self) -> float:
    """Bytes one device sends per execution (ring algorithms)."""
    g = self.group
    if self.kind == "collective-permute":
      return float(self.bytes)
    if self.kind == "reduce-scatter":
      return float(self.bytes * (g - 1))
    if self.kind == "all-reduce":
      return 2.0 * self.bytes * (g - 1) / g
    return self.bytes * (g - 1) / g  # all-gather (result: the whole buffer), all-to-all


def shape_bytes(shape) -> int:
  dtype, dims = shape
  return DTYPE_BYTES.get(dtype, 4) * math.prod(dims)


def _parse_shapes(text: str) -> tuple:
  return tuple((t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in re.findall(r"(\w+)\[([\d,]*)\]", text))


def _closing(text: str, start: int) -> int:
  """Index just past the bracket group that opens at text[start]."""
  pairs, depth = {"(": ")", "{": "}", "[": "]"}, 0
  opening, closing = text[start], pairs[text[start]]
  for i in range(start, len(text)):
    if text[i] == opening:
      depth += 1
    elif text[i] == closing:
      depth -= 1
      if depth == 0:
        return i + 1
  raise ValueError(f"Unbalanced {opening!r} in HLO: {text[start:start + 200]}")


_INSTRUCTION = re.compile(r"\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*")


def parse_instruction(line: str) -> Optional[Instruction]:
  m = _INSTRUCTION.match(line)
  if not m:
    return None
  rest = line[m.end():]
  if rest.startswith("("):  # tuple-shaped result
    end = _closing(rest, 0)
  else:
    end = rest.index(" ")
  shapes, rest = _parse_shapes(rest[:end]), rest[end:].lstrip()
  op = re.match(r"([\w\-]+)\(", rest)
  if not op:
    return None
  close = _closing(rest, op.end() - 1)
  inside, attrs = rest[op.end():close - 1], rest[close:]
  literal = inside if op.group(1) == "constant" else ""
  return Instruction(m.group(1), op.group(1), shapes, tuple(re.findall(r"%([\w.\-]+)", inside)), attrs, literal)


def parse_module(text: str) -> tuple:
  """HLO module text -> ({name: Computation}, entry computation name)."""
  computations, entry, current, body = {}, None, None, {}
  for line in text.splitlines():
    if current is None:
      m = re.match(r"(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$", line)
      if m:
        current, body = m.group(2), {}
        entry = current if m.group(1) else entry
      continue
    if line.startswith("}"):
      computations[current] = Computation(current, body)
      current = None
      continue
    ins = parse_instruction(line)
    if ins is not None:
      body[ins.name] = ins
  if entry is None:
    raise ValueError("No ENTRY computation in the HLO text.")
  return computations, entry


# Device groups. HLO writes them three ways: explicit lists {{0,1},{2,3}}, an iota [G,S]<=[dims]T(perm), and a mesh
# form mesh['a'=4,'b'=2], device_ids=([2,4]T(1,0)) {'a'} (groups along the braced axes of the device array).

def _iota(dims: Sequence[int], perm: Optional[Sequence[int]]) -> np.ndarray:
  ids = np.arange(math.prod(dims)).reshape(dims)
  return (ids.transpose(perm) if perm else ids).reshape(-1)


def _parse_iota(text: str) -> np.ndarray:
  m = re.fullmatch(r"\[([\d,]+)\](?:T\(([\d,]+)\))?", text.strip())
  if not m:
    raise ValueError(f"Unknown device-list form {text!r}")
  dims = [int(d) for d in m.group(1).split(",")]
  return _iota(dims, [int(p) for p in m.group(2).split(",")] if m.group(2) else None)


def device_groups(attrs: str, num_devices: int) -> tuple:
  """The replica groups of a collective's attribute text, as tuples of device ids (global ids: SPMD partitions)."""
  m = re.search(r"replica_groups=", attrs)
  if not m:
    return (tuple(range(num_devices)),)
  text = attrs[m.end():]
  if text.startswith("{"):
    inner = text[1:_closing(text, 0) - 1].strip()
    if not inner:
      return (tuple(range(num_devices)),)
    return tuple(tuple(int(x) for x in g.split(",") if x.strip()) for g in re.findall(r"\{([\d,\s]*)\}", inner))
  iota = re.match(r"\[([\d,]+)\]<=(\[[\d,]+\](?:T\([\d,]+\))?)", text)
  if iota:
    shape = [int(d) for d in iota.group(1).split(",")]
    return tuple(tuple(int(x) for x in row) for row in _parse_iota(iota.group(2)).reshape(shape))
  mesh = re.match(r"mesh\[([^\]]*)\]", text)
  if mesh:
    names = re.findall(r"'([^']+)'=(\d+)", mesh.group(1))
    sizes = [int(s) for _, s in names]
    rest = text[mesh.end():]
    ids = re.match(r",\s*device_ids=\(([^)]*\)?)\)", rest)
    order = _parse_iota(ids.group(1)) if ids else np.arange(math.prod(sizes))
    if ids:
      rest = rest[ids.end():]
    along = re.match(r"\s*\{([^}]*)\}", rest)
    chosen = re.findall(r"'([^']+)'", along.group(1)) if along else [n for n, _ in names]
    index = [n for n, _ in names]
    keep = [i for i, n in enumerate(index) if n not in chosen]
    grouped = [index.index(n) for n in chosen]
    arr = order.reshape(sizes).transpose(keep + grouped)
    return tuple(tuple(int(x) for x in row) for row in arr.reshape(-1, math.prod(sizes[i] for i in grouped)))
  raise ValueError(f"Unknown replica_groups form: {text[:120]!r}")


def _axis_groups(combo, mesh_shape) -> list:
  """Groups of the devices that differ only along the mesh axes in combo (ids: positions in the row-major device
  array, as SPMD partitions are numbered)."""
  order = list(mesh_shape)
  ids = np.arange(math.prod(mesh_shape.values())).reshape(tuple(mesh_shape.values()))
  keep = [order.index(a) for a in order if a not in combo]
  arr = ids.transpose(keep + [order.index(a) for a in combo]).reshape(-1, math.prod(mesh_shape[a] for a in combo))
  return [tuple(int(x) for x in row) for row in arr]


def axes_of(groups: Sequence[Sequence[int]], mesh_shape: Mapping[str, int]) -> Optional[tuple]:
  """The mesh axes whose joint variation makes exactly these groups, or None."""
  names = [a for a, size in mesh_shape.items() if size > 1]
  want = {frozenset(g) for g in groups}
  for r in range(len(names) + 1):
    for combo in itertools.combinations(names, r):
      if {frozenset(g) for g in _axis_groups(combo, mesh_shape)} == want:
        return combo
  return None


# Loops: a while's body runs (trip count) times; XLA annotates the count after optimisation (known_trip_count), and
# before that a static loop's condition compares its counter with a constant.

def _trip_count(ins: Instruction, computations) -> Optional[int]:
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', ins.attrs)
  if known:
    return int(known.group(1))
  cond = [computations[c] for c in _called(ins.attrs, "condition") if c in computations]
  if not cond:
    return None
  root = list(cond[0].instructions.values())[-1]
  if root.opcode != "compare" or "direction=LT" not in root.attrs or len(root.operands) != 2:
    return None
  bound = cond[0].instructions.get(root.operands[1])
  if bound is None or bound.opcode != "constant" or bound.shapes[0][1]:
    return None
  return int(bound.literal)


def _called(attrs: str, key: str) -> list:
  m = re.search(key + r"=(\{[^}]*\}|%[\w.\-]+)", attrs)
  return re.findall(r"%([\w.\-]+)", m.group(1)) if m else []


def executions(computations, entry) -> dict:
  """Computation name -> (runs per step, every enclosing trip count static)."""
  runs = {entry: (1, True)}
  stack = [entry]
  while stack:
    name = stack.pop()
    count, static = runs[name]
    for ins in computations[name].instructions.values():
      callees = []
      if ins.opcode == "while":
        trip = _trip_count(ins, computations)
        for key in ("body", "condition"):
          callees += [(c, count * (trip or 1), static and trip is not None) for c in _called(ins.attrs, key)]
      else:
        for key in ("calls", "to_apply", "branch_computations", "true_computation", "false_computation"):
          callees += [(c, count, static) for c in _called(ins.attrs, key)]
      for callee, n, s in callees:
        if callee in computations and callee not in runs:
          runs[callee] = (n, s)
          stack.append(callee)
  return runs


# A tiny evaluator for the dynamic-slice offsets the partitioner writes: functions of partition-id through constant
# tables. It tells which part of an all-reduced buffer each device keeps.

_BINARY = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.floor_divide,
           "remainder": np.remainder, "minimum": np.minimum, "maximum": np.maximum}


def _evaluate(name: str, comp: Computation, partition: int, depth: int = 0):
  ins = comp.instructions.get(name)
  if ins is None or depth > 32:
    return None
  args = lambda: [_evaluate(o, comp, partition, depth + 1) for o in ins.operands]
  if ins.opcode == "partition-id":
    return np.asarray(partition)
  if ins.opcode == "replica-id":
    return np.asarray(0)
  if ins.opcode == "constant":
    if "..." in ins.literal:  # elided: XLA dumps large constants only with xla_dump_large_constants
      return None
    values = [int(float(v)) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?", ins.literal)]
    if not values:
      return None
    return np.asarray(values if ins.shapes[0][1] else values[0])
  if ins.opcode in ("reshape", "bitcast", "convert", "copy"):
    (x,) = args()
    return None if x is None else x.reshape(ins.shapes[0][1])
  values = args()
  if any(v is None for v in values):
    return None
  if ins.opcode in _BINARY:
    return _BINARY[ins.opcode](*values)
  if ins.opcode == "clamp":
    low, x, high = values
    return np.clip(x, low, high)
  if ins.opcode == "dynamic-slice" and values[0].ndim == 1:
    size = int(re.search(r"dynamic_slice_sizes=\{(\d+)\}", ins.attrs).group(1))
    start = int(np.clip(values[1], 0, values[0].shape[0] - size))
    return values[0][start:start + size]
  return None


def _slice_users(ar: Instruction, comp: Computation, users) -> Optional[list]:
  """The dynamic-slices that take the all-reduce's only uses (through reshapes), or None if something else uses it."""
  found, frontier = [], [ar.name]
  while frontier:
    name = frontier.pop()
    us = users.get(name, [])
    if not us:
      return None if name == ar.name else found  # a root or unused value: no slice decides what is kept
    for u in us:
      if u.opcode == "dynamic-slice" and u.operands[0] == name:
        found.append(u)
      elif u.opcode in _PASS_THROUGH:
        frontier.append(u.name)
      else:
        return None
  return found or None


def _slice_pieces(ds: Instruction, comp: Computation, num_devices: int):
  """(split dimension, number of pieces, piece index of each device), or None if the offsets do not evaluate."""
  source = comp.instructions[ds.operands[0]].shapes[0][1]
  kept = ds.shapes[0][1]
  split = [d for d, (a, b) in enumerate(zip(source, kept)) if a != b]
  if len(split) != 1 or source[split[0]] % kept[split[0]]:
    return None
  dim = split[0]
  pieces = source[dim] // kept[dim]
  index = []
  for p in range(num_devices):
    offset = _evaluate(ds.operands[1 + dim], comp, p)
    if offset is None:
      return None
    index.append(int(np.asarray(offset).reshape(-1)[0]) // kept[dim])
  return dim, pieces, index


def _split_by_slices(groups, pieces: int, index, mesh_shape) -> Optional[tuple]:
  """Mesh axes over which the reduce-scatter runs: within each group of the all-reduce, the devices varying along them
  keep every piece once. None if no such product of axes exists (the pair then stays an all-reduce)."""
  group_axes = axes_of(groups, mesh_shape)
  for r in range(1, len(group_axes or ()) + 1):
    for combo in itertools.combinations(group_axes, r):
      if math.prod(mesh_shape[a] for a in combo) == pieces and all(
          sorted(index[d] for d in g) == list(range(pieces)) for g in _axis_groups(combo, mesh_shape)):
        return combo
  return None


# Which program input an all-gather moves: follow its operand back through casts, reshapes and slices (a scanned
# layer's weights are a slice of the stacked input, passed into the loop as a tuple element) to an ENTRY parameter,
# whose metadata names it (jax writes op_name="state.params['vit']...").
_TRACE_THROUGH = ("convert", "bitcast", "reshape", "copy", "transpose", "dynamic-slice", "slice")


def _loop_callers(computations) -> dict:
  """Body computation name -> (computation holding the while, the while instruction)."""
  callers = {}
  for comp in computations.values():
    for ins in comp.instructions.values():
      if ins.opcode == "while":
        for body in _called(ins.attrs, "body"):
          callers[body] = (comp, ins)
  return callers


def _input_name(name: str, comp: Computation, entry: str, callers, depth: int = 0) -> str:
  ins = comp.instructions.get(name)
  if ins is None or depth > 64:
    return ""
  if ins.opcode == "parameter":
    m = re.search(r'op_name="((?:[^"\\]|\\.)*)"', ins.attrs)
    return m.group(1).replace("\\", "") if comp.name == entry and m else ""
  if ins.opcode in _TRACE_THROUGH:
    return _input_name(ins.operands[0], comp, entry, callers, depth + 1)
  if ins.opcode == "get-tuple-element":
    index = int(re.search(r"index=(\d+)", ins.attrs).group(1))
    source = comp.instructions.get(ins.operands[0])
    if source is not None and source.opcode == "tuple":
      return _input_name(source.operands[index], comp, entry, callers, depth + 1)
    if source is not None and source.opcode == "parameter" and comp.name in callers:
      outer, loop = callers[comp.name]
      init = outer.instructions.get(loop.operands[0])
      if init is not None and init.opcode == "tuple":
        return _input_name(init.operands[index], outer, entry, callers, depth + 1)
  return ""


def collectives(text: str, mesh_shape: Mapping[str, int], accelerator_rewrites: bool = True) -> list:
  """Every collective of the module, with its executions per step. `mesh_shape` ({axis: size} in the mesh's order)
  names the axes of each group. With accelerator_rewrites, an all-reduce whose only uses are dynamic-slices that
  split it over (some of) its devices reads as the reduce-scatter (+ all-reduce of the slice) an accelerator runs."""
  computations, entry = parse_module(text)
  runs = executions(computations, entry)
  callers = _loop_callers(computations)
  n = math.prod(mesh_shape.values())
  found = []
  for cname, comp in computations.items():
    if cname not in runs:
      continue
    users = {}
    for ins in comp.instructions.values():
      for o in ins.operands:
        users.setdefault(o, []).append(ins)
    for ins in comp.instructions.values():
      kind = ins.opcode.removesuffix("-start")
      if kind not in KINDS:
        continue
      shapes = ins.shapes
      if ins.opcode.endswith("-start") and kind in ("all-gather", "collective-permute") and len(shapes) > 1:
        shapes = shapes[len(shapes) // 2:]  # (operands, results)
      # A permute's bytes do not depend on a group; its pairs are no groups of the mesh.
      groups = device_groups(ins.attrs, n) if kind != "collective-permute" else None
      axes = axes_of(groups, mesh_shape) if groups else None
      base = dict(name=ins.name, runs=runs[cname][0], static_runs=runs[cname][1])
      if kind == "all-gather" and len(ins.operands) == 1:
        base["param"] = _input_name(ins.operands[0], comp, entry, callers)
      scatter = (_as_reduce_scatter(ins, comp, users, groups, mesh_shape, axes, base)
                 if accelerator_rewrites and kind == "all-reduce" and len(shapes) == 1 else None)
      found += scatter or [Collective(kind=kind, shapes=shapes, group=len(groups[0]) if groups else 2, axes=axes,
                                      **base)]
  return found


def _as_reduce_scatter(ins, comp, users, groups, mesh_shape, axes, base) -> Optional[list]:
  """An all-reduce + dynamic-slice pair as an accelerator runs it: a reduce-scatter over the devices that keep
  different slices, then (if the all-reduce spanned more) an all-reduce of the slice over the rest. None if the
  all-reduce's result is used otherwise or its slicing does not split over mesh axes."""
  slices = _slice_users(ins, comp, users)
  if not slices or len({ds.shapes for ds in slices}) != 1:
    return None
  cuts = [_slice_pieces(ds, comp, math.prod(mesh_shape.values())) for ds in slices]
  if any(c is None for c in cuts) or len({(d, p, tuple(i)) for d, p, i in cuts}) != 1:
    return None
  _, pieces, index = cuts[0]
  scatter_axes = _split_by_slices(groups, pieces, index, mesh_shape)
  if scatter_axes is None:
    return None
  kept, group, source = slices[0].shapes, len(groups[0]), "all-reduce + dynamic-slice"
  found = [Collective(kind="reduce-scatter", shapes=kept, group=pieces, axes=scatter_axes, source=source, **base)]
  if pieces < group:
    rest = tuple(a for a in axes if a not in scatter_axes)
    found.append(Collective(kind="all-reduce", shapes=kept, group=group // pieces, axes=rest, source=source,
                            **dict(base, name=base["name"] + ".slice")))
  return found


# Parameters: what the collectives should carry.

@dataclasses.dataclass(frozen=True)
class Param:
  path: str            # as jax.tree_util.keystr writes it under the state's params: "['vit']['patch_embed']['kernel']"
  local: tuple         # dims one device computes with: the fsdp split undone, a tensor split kept
  shard: tuple         # dims one device stores
  fsdp: int            # fsdp devices it is split over (1: not split over fsdp)
  layered: bool = False  # the leading axis stacks a scanned tower's layers (one loop iteration sees local[1:])
  remat: bool = False    # in a rematerialised tower: gathered again for the backward pass
  uses: int = 1          # forward uses per step: micro-batches, times two for an embedding tied to the LM head
  feature_uses: int = 0  # gradient accumulation's feature pass: one more forward per micro-batch, never remat'd

  def keys(self, dims=None) -> set:
    """Shapes (as _key) of the whole buffer (or of `dims`, e.g. the shard): stacked, and one layer of a scanned
    stack."""
    dims = self.local if dims is None else dims
    return {_key(dims)} | ({_key(dims[1:])} if self.layered else set())

  def gathers_expected(self) -> int:
    """All-gathers per step at one per use: per layer, and again for the backward pass of a rematerialised tower."""
    return (self.local[0] if self.layered else 1) * ((2 if self.remat else 1) * self.uses + self.feature_uses)


def _key(dims) -> tuple:
  # Layout assignment may permute dimensions and reductions drop unit ones ([1, D] arrives as [D]), so shapes
  # compare as their sorted dims above 1.
  return tuple(sorted(d for d in dims if d != 1))


def _data_parallel(c: Collective) -> bool:
  return c.axes is None or bool({"data", "fsdp"} & set(c.axes))


def full_size_gradient_all_reduces(found: Sequence[Collective], params: Sequence[Param]) -> list:
  """All-reduces over data-parallel axes of a whole (unsplit over fsdp) buffer shaped like an fsdp-split parameter:
  that parameter's gradient reduced at full size, where a reduce-scatter would do. Shapes are all this reading goes
  by, so two collisions are discounted: a shape shared by parameters not split over fsdp (a LayerNorm scale beside a
  bias of the same width: their gradients are rightly all-reduced whole) counts only beyond their number, and an
  all-reduce over data alone shaped like a parameter's fsdp shard is that shard's gradient. Instructions are counted,
  not executions: one reduces a gradient, inside whatever loop (layers, micro-batches) it runs.
  -> [(shape, instructions, allowed)]"""
  split = set().union(*(p.keys() for p in params if p.fsdp > 1))
  whole = collections.Counter(k for p in params if p.fsdp == 1 for k in p.keys())
  shards = set().union(*(p.keys(p.shard) for p in params if p.fsdp > 1))
  seen = collections.Counter()
  for c in found:
    if c.kind != "all-reduce" or not _data_parallel(c):
      continue
    for _, dims in c.shapes:
      key = _key(dims)
      if key in split and not (c.axes is not None and "fsdp" not in c.axes and key in shards):
        seen[key] += 1
  return [(k, n, whole[k]) for k, n in sorted(seen.items()) if n > whole[k]]


def not_reduce_scattered(found: Sequence[Collective], params: Sequence[Param]) -> list:
  """fsdp-split parameters whose gradient no reduce-scatter over an fsdp group produces (matched by shard shape, or
  one layer's shard inside a scanned tower's loop; one reduce-scatter instruction per parameter). -> [path, ...]"""
  made = collections.Counter(_key(dims) for c in found if c.kind == "reduce-scatter" and c.axes and "fsdp" in c.axes
                             for _, dims in c.shapes)
  missing = []
  for p in params:
    if p.fsdp > 1:
      key = next((k for k in p.keys(p.shard) if made[k]), None)
      if key is None:
        missing.append(p.path)
      else:
        made[key] -= 1
  return missing


def parameter_gathers(found: Sequence[Collective], params: Sequence[Param], prefix: str = "state.params") -> dict:
  """Per fsdp-split parameter: (all-gathers of the stored parameter per step, at one per use). A parameter cast or
  combined before it is gathered (XLA gathers some biases after a cast-and-add) is not traced and reads 0."""
  gathered = collections.Counter()
  for c in found:
    if c.kind == "all-gather" and c.param.startswith(prefix):
      gathered[c.param[len(prefix):]] += c.runs
  return {p.path: (gathered[p.path], p.gathers_expected()) for p in params if p.fsdp > 1}


def wire_bytes_by_kind(found: Sequence[Collective]) -> dict:
  """Kind -> bytes one device sends per step."""
  totals = collections.Counter()
  for c in found:
    totals[c.kind] += c.wire_bytes * c.runs
  return {k: int(v) for k, v in sorted(totals.items())}


def ideal_wire_bytes(params: Sequence[Param], mesh_shape: Mapping[str, int], *, param_bytes: int,
                     contrastive_rows: int, embed_dim: int, micro_batches: int = 1) -> dict:
  """Kind -> the least bytes one device must send per step for this mesh (ring algorithms), counting:

  - all-gather: every fsdp-split parameter, gathered from its shards before each use (Param.gathers_expected:
    again in the backward pass of a rematerialised tower, once per micro-batch), (fsdp - 1) shards each time; plus
    the contrastive loss's columns, v and t [contrastive_rows, embed_dim] float32, of which a device receives all but
    its own rows;
  - reduce-scatter: the gradient of every fsdp-split parameter, (fsdp - 1) shards, once per micro-batch; plus the
    transpose of the contrastive gather;
  - all-reduce: each gradient shard once over the devices that hold the same shard (data for a parameter split
    over fsdp, data x fsdp for one that is not), twice (n - 1) / n of the shard.

  Parameters move at `param_bytes` per element, the compute dtype: each can be cast on its shard before it moves.
  Not counted: tensor-parallel activations and scalars (loss sums, norms).
  """
  data, fsdp = mesh_shape.get("data", 1), mesh_shape.get("fsdp", 1)
  gather = scatter = reduce = 0.0
  for p in params:
    shard = param_bytes * math.prod(p.shard)
    layers = p.local[0] if p.layered else 1
    if p.fsdp > 1:
      gather += shard / layers * (p.fsdp - 1) * p.gathers_expected()
      scatter += shard * (p.fsdp - 1) * micro_batches
      group = data
    else:
      group = data * fsdp
    reduce += 2.0 * shard * (group - 1) / group
  n = data * fsdp
  columns = 2 * contrastive_rows * embed_dim * 4 * (n - 1) / n
  return {"all-gather": int(gather + columns), "all-reduce": int(reduce), "reduce-scatter": int(scatter + columns)}
