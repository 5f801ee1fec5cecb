"""One public surface per room.

Each room (`solvers/`, `implicit/`, `rules/`, ... mapped in pyproject.toml) lists its
public names in its `__init__`; its other modules are private (a leading underscore).
Code outside a room imports the room's names from the room, never from its private
modules. The tests of a room (`tests/<room>/`) may import its private modules, to test
internals; the hall's private modules (`innerloop._shared`, `innerloop._lopt_cli`) are
for the rooms, the hall and the tests. Scanned: every Python file and notebook.
"""

import ast
import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# "innerloop.solvers" -> "solvers/" for every mapped room (the hall maps to itself).
ROOMS = {pkg.split(".", 1)[1]: ROOT / d
         for pkg, d in _PYPROJECT["tool"]["setuptools"]["package-dir"].items()
         if pkg.startswith("innerloop.")}
HALL = ROOT / "innerloop"
_SKIP = {".venv", ".git", "build", "site", ".hypothesis", ".pytest_cache", "innerloop.egg-info"}


def _sources():
    for path in sorted(ROOT.rglob("*")):
        if _SKIP & set(path.relative_to(ROOT).parts):
            continue
        if path.suffix == ".py":
            yield path, path.read_text()
        elif path.suffix == ".ipynb":
            cells = json.loads(path.read_text())["cells"]
            code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
            # IPython magics are not Python.
            yield path, "\n".join(line for src in code for line in src.splitlines()
                                  if not line.lstrip().startswith(("%", "!")))


def _imports(tree):
    """(module, imported names, line) of every import statement."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or ""), [a.name for a in node.names], \
                node.lineno


def _owner(path):
    """The room a file belongs to ("hall" for innerloop/), the room its tests are
    in ("tests:<room>"), or None."""
    for room, directory in ROOMS.items():
        if directory in path.parents:
            return room
    if HALL in path.parents:
        return "hall"
    rel = path.relative_to(ROOT).parts
    if rel[0] == "tests":
        return f"tests:{rel[1]}" if len(rel) > 2 and rel[1] in ROOMS else "tests"
    return None


def _violations(path, source):
    owner = _owner(path)
    found = []
    for module, names, line in _imports(ast.parse(source)):
        where = f"{path.relative_to(ROOT)}:{line}"
        if module.startswith("."):
            found.append(f"{where}: relative import {module!r} (the codebase imports "
                         "absolutely)")
            continue
        parts = module.split(".")
        if parts[0] != "innerloop":
            continue
        # `from innerloop.rules import _lopt` imports a private module by name.
        targets = [parts] + [parts + [n] for n in names if n.startswith("_")]
        for target in targets:
            if len(target) >= 2 and target[1] in ROOMS:
                room, rest = target[1], target[2:]
                if any(p.startswith("_") and p != "__init__" for p in rest) and \
                        owner not in (room, f"tests:{room}"):
                    found.append(f"{where}: imports {'.'.join(target)}, private to "
                                 f"{room}/; import from innerloop.{room}")
            elif len(target) >= 2 and target[1].startswith("_"):
                if owner is None:
                    found.append(f"{where}: imports {'.'.join(target)}, private to the "
                                 "package; import a public name")
    return found


def test_nothing_outside_a_room_imports_its_private_modules():
    found = [v for path, source in _sources() for v in _violations(path, source)]
    assert not found, "\n".join(found)


def test_the_scan_catches_a_private_import(tmp_path):
    bench = ROOT / "benchmarks" / "x.py"
    assert _violations(bench, "from innerloop.rules._badger import Badger\n")
    assert _violations(bench, "from innerloop.rules import _lopt\n")
    assert _violations(bench, "import innerloop._shared\n")
    assert _violations(ROOMS["implicit"] / "x.py", "from innerloop.solvers._base import X\n")
    assert not _violations(ROOMS["solvers"] / "x.py", "from innerloop.solvers._base import X\n")
    assert not _violations(ROOT / "tests" / "solvers" / "t.py",
                           "from innerloop.solvers._anderson import spd_solve\n")
    assert _violations(ROOT / "tests" / "rules" / "t.py",
                       "from innerloop.solvers._anderson import spd_solve\n")
    assert not _violations(bench, "from innerloop.rules import Badger\n")


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_each_room_lists_its_public_names(room):
    """`__all__` of a room is exactly the public names its `__init__` binds, and every
    module in the room other than `__init__` and public submodules is private."""
    module = importlib.import_module(f"innerloop.{room}")
    listed = set(module.__all__)
    missing = [n for n in listed if not hasattr(module, n)]
    assert not missing, f"innerloop.{room}.__all__ names what it lacks: {missing}"
    tree = ast.parse((ROOMS[room] / "__init__.py").read_text())
    bound = {a.asname or a.name for node in tree.body if isinstance(node, ast.ImportFrom)
             for a in node.names}
    public = {n for n in bound if not n.startswith("_")}
    assert public == listed, (f"innerloop.{room}: imported but not in __all__: "
                              f"{sorted(public - listed)}; in __all__ but not imported: "
                              f"{sorted(listed - public)}")
    for path in ROOMS[room].glob("*.py"):
        if path.stem != "__init__" and not path.stem.startswith("_"):
            assert path.stem in listed, (f"{path.relative_to(ROOT)} is a public module "
                                         f"not listed in innerloop.{room}.__all__")


def test_the_hall_reexports_what_it_lists():
    import innerloop
    assert all(hasattr(innerloop, n) for n in innerloop.__all__)


@pytest.mark.subprocess
def test_import_innerloop_does_not_import_hypothesis():
    code = ("import sys, innerloop; assert 'hypothesis' not in sys.modules, 'loaded'; "
            "innerloop.testing; assert 'hypothesis' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
