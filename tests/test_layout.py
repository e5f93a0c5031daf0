"""The layout's rules, read from the source (every import, at module level or inside a function):
  lcl_jax/models     no data_pipelines, optax, orbax or tensorflow (a model knows nothing of data or training)
  data_pipelines     no configs, no jax, no lcl_jax (data knows nothing of configs or the model)
  the library        (lcl_jax, data_pipelines, configs) never imports tools/ or tests/
and no import cycle among the project's modules; every python -m command defines its flags only when run."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("lcl_jax", "data_pipelines", "configs", "tools", "tests")


def _modules():
  """{dotted module name: path} for every .py file of the project's packages."""
  out = {}
  for package in PACKAGES:
    for folder, _, files in os.walk(os.path.join(REPO, package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
          out[dotted.removesuffix(".__init__")] = path
  return out


MODULES = _modules()


def _imports(name):
  """Every module name `name` imports (absolute, as written; relative imports resolved)."""
  path = MODULES[name]
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      # `from pkg import mod` depends on pkg.mod when that is a module, else on pkg.
      out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
  return out


IMPORTS = {name: _imports(name) for name in MODULES}


def _offending(prefix, banned):
  return sorted(f"{name} imports {dep}" for name, deps in IMPORTS.items() if name.startswith(prefix)
                for dep in deps if any(dep == b or dep.startswith(b + ".") for b in banned))


@pytest.mark.parametrize("prefix,banned", [
    ("lcl_jax.models", ("data_pipelines", "optax", "orbax", "tensorflow", "tensorflow_datasets", "configs")),
    ("data_pipelines", ("configs", "jax", "flax", "lcl_jax", "optax", "orbax")),
    ("lcl_jax", ("tools", "tests")),
    ("data_pipelines", ("tools", "tests")),
    ("configs", ("tools", "tests", "lcl_jax")),
    ("tools", ("tests",)),
])
def test_imports_run_one_way(prefix, banned):
  assert not _offending(prefix, banned)


def test_the_rules_see_imports_inside_functions():
  """The reader finds a function-level import (the kind a rule could otherwise miss)."""
  assert "lcl_jax.interop.open_clip" in IMPORTS["lcl_jax.export"]  # only inside export_open_clip


def test_no_import_cycle():
  graph = {name: {d for d in deps if d in MODULES and d != name} for name, deps in IMPORTS.items()}
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(v):  # Tarjan's strongly connected components
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  assert not cycles, cycles


def _is_main_block(node):
  return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
          and node.test.left.id == "__name__")


def _flag_calls(tree):
  """(line, name) of every flags.DEFINE_* / config_flags.DEFINE_* / mark_flags_as_required call under `tree`."""
  return [(n.lineno, n.func.attr) for n in ast.walk(tree) if isinstance(n, ast.Call)
          and isinstance(n.func, ast.Attribute) and (n.func.attr.startswith("DEFINE")
                                                      or n.func.attr == "mark_flags_as_required")]


ENTRY_POINTS = sorted(name for name, path in MODULES.items()
                      if any(_is_main_block(n) for n in ast.parse(open(path).read(), path).body))


def test_entry_points_define_their_flags_only_when_run():
  """Every python -m command defines its absl flags under `if __name__ == "__main__":` (importing it claims no flag
  name), or in a `_define_flags(flag_values)` its tests call with their own FlagValues; --config is ml_collections'
  config file flag, locked."""
  assert {"lcl_jax.main", "lcl_jax.export", "data_pipelines.demo.__main__", "tools.bench"} <= set(ENTRY_POINTS)
  for name in ENTRY_POINTS:
    tree = ast.parse(open(MODULES[name]).read(), MODULES[name])
    outside = [call for node in tree.body if not _is_main_block(node)
               and not (isinstance(node, ast.FunctionDef) and node.name == "_define_flags"
                        and [a.arg for a in node.args.args] == ["flag_values"])
               for call in _flag_calls(node)]
    assert not outside, f"{name} defines flags outside its __main__ block: {outside}"
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)):
      if call.func.attr == "DEFINE_string" and call.args and getattr(call.args[0], "value", None) == "config":
        raise AssertionError(f"{name}: --config as a string flag; use config_flags.DEFINE_config_file")
      if call.func.attr == "DEFINE_config_file":
        lock = {k.arg: getattr(k.value, "value", None) for k in call.keywords}.get("lock_config")
        assert lock is True, f"{name}: DEFINE_config_file without lock_config=True"


def test_no_module_is_named_like_a_standard_library_one():
  """`python tools/x.py` puts tools/ first on sys.path: a tools/inspect.py would replace the standard library's
  inspect for everything that process imports (data_pipelines/inspect.py once did)."""
  import sys
  assert not sorted(name for name in MODULES if name.rpartition(".")[2] in sys.stdlib_module_names)
