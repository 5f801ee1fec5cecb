"""MkDocs hooks of the documentation site (mkdocs.yml `hooks:`).

- The API pages are generated from each module's `__all__`: a page holding the line
  `<!-- public names: innerloop.solvers -->` gets one entry per public name, so a name
  added to a room's `__init__` appears in the reference without editing the page.
  `tests/test_docs.py` checks that every room has a page and every name an entry.
- griffe (mkdocstrings' collector) reads the sources statically and cannot follow the
  package-dir mapping of pyproject.toml (`solvers/` -> `innerloop.solvers`), so the
  sources are copied into `build/docs-src/innerloop/` as the installed package lays
  them out, and mkdocstrings reads them there.
- The notebooks (`notebooks/*.ipynb`) join the site under `notebooks/`, rendered by
  mkdocs-jupyter without being executed.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import tomllib
import types
from pathlib import Path

try:
    from mkdocs.plugins import event_priority
except ImportError:  # tests/test_docs.py imports this module without the docs extra
    def event_priority(priority):
        return lambda hook: hook

ROOT = Path(__file__).resolve().parents[1]
SOURCE_TREE = ROOT / "build" / "docs-src"
MARKER = re.compile(r"^<!-- public names: ([\w.]+) -->$", re.MULTILINE)


def package_dirs() -> dict[str, Path]:
    """pyproject's package-dir: import name -> folder ("innerloop.rules" -> rules/)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {pkg: ROOT / folder
            for pkg, folder in pyproject["tool"]["setuptools"]["package-dir"].items()}


def api_pages(docs_dir: Path = ROOT / "docs") -> dict[str, str]:
    """Module name -> the API page (relative to docs/) that lists its public names."""
    pages = {}
    for page in sorted((docs_dir / "api").glob("*.md")):
        for module in MARKER.findall(page.read_text()):
            pages[module] = page.relative_to(docs_dir).as_posix()
    return pages


def entries(module_name: str, pages: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(public name, markdown of its entry) for every name in the module's `__all__`.

    A submodule is a link to its own API page; a name the hall re-exports from a room
    is a cross-reference to the room's entry (one rendering per object); every other
    name is rendered from its docstring by mkdocstrings.
    """
    pages = api_pages() if pages is None else pages
    module = importlib.import_module(module_name)
    page = pages[module_name]
    rooms = [importlib.import_module(m) for m in pages if m != module_name]
    out = []
    for name in module.__all__:
        obj = getattr(module, name)
        if isinstance(obj, types.ModuleType):
            target = os.path.relpath(pages[obj.__name__], os.path.dirname(page))
            out.append((name, f"## `{name}` {{#{module_name}.{name}}}\n\n"
                              f"The module [`{obj.__name__}`]({target}).\n"))
            continue
        owner = next((room.__name__ for room in rooms
                      if module_name == "innerloop" and name in getattr(room, "__all__", ())
                      and getattr(room, name) is obj), None)
        if owner is not None:
            out.append((name, f"## `{name}` {{#{module_name}.{name}}}\n\n`{module_name}.{name}` is "
                              f"[`{owner}.{name}`][{owner}.{name}].\n"))
        else:
            out.append((name, f"::: {module_name}.{name}\n"))
    return out


def build_source_tree() -> None:
    """Copy the package's sources into build/docs-src/ as they are installed."""
    shutil.rmtree(SOURCE_TREE, ignore_errors=True)
    for package, folder in package_dirs().items():
        target = SOURCE_TREE.joinpath(*package.split("."))
        for source in folder.glob("*.py"):
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / source.name)
    # Sub-packages of the hall that are not mapped (innerloop.demo) come with it.
    for source in (ROOT / "innerloop").rglob("*.py"):
        dest = SOURCE_TREE / source.relative_to(ROOT)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)


@event_priority(100)  # before mkdocstrings' on_config, which drops a missing search path
def on_config(config):
    build_source_tree()
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which converts .ipynb pages
def on_files(files, config):
    from mkdocs.structure.files import File

    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(File(f"notebooks/{notebook.name}", src_dir=str(ROOT),
                          dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    pages = api_pages(Path(config["docs_dir"]))

    def expand(match):
        return "\n".join(entry for _, entry in entries(match.group(1), pages))

    return MARKER.sub(expand, markdown)
