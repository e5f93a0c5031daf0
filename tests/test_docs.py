"""Every design note the tree points at exists, and names it by a path that resolves.

Scans the tracked .py/.md/.sh/.sbatch/.toml files. A `docs/<name>.md|png` path must exist from the repository root;
a relative markdown link target (`../docs/x.md`, `x.md`) must exist from its file's folder; a cited "section N" must be
a `## N.` heading of that note; the three design notes
cited by bare name elsewhere (method, formats, pipeline) must carry their folder unless they resolve from the file's
own folder (a note in docs/ naming its sibling).
"""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTENSIONS = ("*.py", "*.md", "*.sh", "*.sbatch", "*.toml")
# docs/ paths, not preceded by a name character (so `shared/docs/...` or `mydocs/...` are not taken for ours).
_DOCS_PATH = re.compile(r"(?<![\w.-])(?:\.\./)*docs/[\w./-]+?\.(?:md|png)\b")
_BARE = re.compile(r"(?<![\w/.-])(?:method|formats|pipeline)\.md\b")
# "docs/x.md section 6", "[docs/x.md](../docs/x.md) section 6", "`docs/x.md` sections 1 and 2".
_SECTION = re.compile(r"(?<![\w.-])docs/([\w-]+\.md)(?:\]\([^)]*\))?`?\s+sections?\s+(\d+(?:\s*(?:,|and)\s*\d+)*)")
_LINK = re.compile(r"\]\(([^)\s#]+\.(?:md|png))(?:#[^)]*)?\)")
NOTES = ("method", "formats", "pipeline", "performance", "ablation", "interop")


def tracked_files(root=ROOT):
  out = subprocess.run(["git", "ls-files", "--", *EXTENSIONS], cwd=root, capture_output=True, text=True, check=True)
  this = os.path.relpath(os.path.abspath(__file__), ROOT)  # its examples are broken on purpose
  return [f for f in out.stdout.splitlines() if os.path.isfile(os.path.join(root, f)) and f != this]


def broken_references(root=ROOT, files=None):
  """-> sorted 'file:line: why' for every reference that does not resolve."""
  problems = []
  for rel in tracked_files(root) if files is None else files:
    folder = os.path.dirname(os.path.join(root, rel))
    with open(os.path.join(root, rel), encoding="utf-8") as f:
      lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
      where = f"{rel}:{number}"
      for match in _DOCS_PATH.finditer(line):
        path = match.group(0)
        base = folder if path.startswith("../") else root
        if not os.path.exists(os.path.normpath(os.path.join(base, path))):
          problems.append(f"{where}: {path} does not exist")
      for match in _LINK.finditer(line):
        target = match.group(1)
        if "://" not in target and not os.path.exists(os.path.normpath(os.path.join(folder, target))):
          problems.append(f"{where}: link {target} does not resolve from {os.path.dirname(rel) or '.'}/")
      for match in _SECTION.finditer(line):
        note = os.path.join(root, "docs", match.group(1))
        headings = open(note, encoding="utf-8").read() if os.path.exists(note) else ""
        for section in re.findall(r"\d+", match.group(2)):
          if not re.search(rf"^## {section}\. ", headings, re.MULTILINE):
            problems.append(f"{where}: docs/{match.group(1)} has no section {section}")
      for match in _BARE.finditer(line):
        if not os.path.exists(os.path.join(folder, match.group(0))):
          problems.append(f"{where}: {match.group(0)} without its folder (docs/{match.group(0)})")
  return sorted(set(problems))


def test_every_docs_reference_resolves():
  assert broken_references() == []


def test_the_index_names_every_note():
  with open(os.path.join(ROOT, "docs", "README.md"), encoding="utf-8") as f:
    index = f.read()
  for name in NOTES:
    assert os.path.exists(os.path.join(ROOT, "docs", f"{name}.md")), name
    assert f"]({name}.md)" in index, name


@pytest.mark.parametrize("text, expected", [
    ("see method.md section 4\n", "without its folder"),
    ("see docs/method_v2.md\n", "does not exist"),
    ("[x](../docs/nothing.md)\n", "does not resolve"),
    ("![pic](docs/missing.png)\n", "does not exist"),
    ("as docs/method.md sections 1 and 9 say\n", "has no section 9"),
])
def test_it_fails_on_a_broken_reference(tmp_path, text, expected):
  """The check itself can fail: a throwaway repository with one good note and one bad reference."""
  subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "method.md").write_text("# m\n\n## 1. One\n\nSee [formats](method.md).\n")
  (tmp_path / "pkg").mkdir()
  (tmp_path / "pkg" / "good.py").write_text('"""docs/method.md section 1; [m](../docs/method.md)."""\n')
  (tmp_path / "pkg" / "bad.md").write_text(text)
  subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
  problems = broken_references(str(tmp_path))
  assert problems and all(p.startswith("pkg/bad.md:1: ") for p in problems), problems
  assert any(expected in p for p in problems), problems
