"""The documentation cannot drift from the code.

- Every fenced ```python block of README.md and docs/**/*.md runs: a page's blocks in
  order, in one namespace. A block whose title starts with "not run:" (```python
  title="not run: meta-trains for 20 minutes") is shown but skipped, and counted.
- Every room (pyproject's package-dir), `innerloop.rules.tasks` and `innerloop.testing`
  has an API page, and every name of each module's `__all__` an entry on it (the pages
  are generated from `__all__` by docs/hooks.py; `make docs` builds them with --strict,
  which fails on an entry mkdocstrings cannot collect or a broken link).
- The README is a landing page: under 150 lines, its links lead to files that exist,
  and every number it quotes is also on a docs page or a results file a docs page
  includes.
"""

import importlib.util
import re
import sys
import tomllib
import types
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\n]*)$")
NOT_RUN = re.compile(r'title="not run: ?(?P<reason>[^"]+)"')
# A block that needs a long run may be shown without running; keep these few.
MAX_NOT_RUN = 4


def _load_hooks():
    spec = importlib.util.spec_from_file_location("_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


def code_blocks(path):
    """(info string, first line number, code) of every fenced block of a markdown file,
    dedented by the fence's indentation (blocks inside list items)."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"].strip()
        body, j = [], i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.relative_to(ROOT)}:{i + 1}: unclosed code fence")
        blocks.append((info, i + 2, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def python_blocks(path):
    """(line, code, not-run reason or None) of the page's Python blocks."""
    out = []
    for info, line, code in code_blocks(path):
        if info.split(" ", 1)[0].lstrip("{.") not in ("python", "py"):
            continue
        reason = NOT_RUN.search(info)
        out.append((line, code, reason["reason"] if reason else None))
    return out


RUN_PAGES = [p for p in PAGES if python_blocks(p)]


@pytest.fixture
def restore_jax_config():
    """A page may switch jax options (float64 for hypothesis problems): give back the
    session's, so later tests in this worker run as configured."""
    names = ("jax_enable_x64", "jax_numpy_dtype_promotion", "jax_default_matmul_precision")
    saved = {name: getattr(jax.config, name) for name in names}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


@pytest.mark.parametrize("page", RUN_PAGES, ids=[str(p.relative_to(ROOT)) for p in RUN_PAGES])
def test_page_code_runs(page, restore_jax_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    namespace = {"__name__": "__docs__"}
    for line, code, reason in python_blocks(page):
        # Padded to its line in the page: a traceback shows the page's file and line.
        compiled = compile("\n" * (line - 1) + code, str(page), "exec")
        if reason is None:  # a not-run block is still compiled: no syntax drift
            exec(compiled, namespace)


def test_not_run_blocks_are_few_and_say_why():
    skipped = [(p.relative_to(ROOT), line, reason) for p in PAGES
               for line, _, reason in python_blocks(p) if reason is not None]
    print(f"{len(skipped)} not-run blocks:", *skipped, sep="\n  ")
    assert len(skipped) <= MAX_NOT_RUN, skipped
    assert all(len(reason.split()) >= 2 for _, _, reason in skipped), skipped
    assert README in RUN_PAGES  # the 30-second example runs


def test_collector_finds_blocks_in_lists_and_marks(tmp_path):
    page = tmp_path / "page.md"
    page.write_text('text\n\n- item\n\n    ```python\n    x = 1\n    ```\n\n'
                    '```python title="not run: too long"\ny = 2\n```\n\n```bash\nls\n```\n')
    assert python_blocks(page) == [(6, "x = 1\n", None), (10, "y = 2\n", "too long")]


# ---------------------------------------------------------------- API reference


def documented_modules():
    """The modules that must have an API page: the hall, every room of pyproject's
    package-dir, every module a documented module lists in `__all__`, and
    `innerloop.testing` (the hall loads it on first use, so it is not in `__all__`)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    todo = ["innerloop", "innerloop.testing",
            *(p for p in pyproject["tool"]["setuptools"]["package-dir"] if p != "innerloop")]
    found = set()
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        module = importlib.import_module(name)
        todo += [obj.__name__ for obj in (getattr(module, n) for n in module.__all__)
                 if isinstance(obj, types.ModuleType)]
    return found


def test_every_module_has_an_api_page_in_the_nav():
    pages = hooks.api_pages()
    assert set(pages) == documented_modules()
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in pages.values():
        assert f": {page}\n" in nav, f"mkdocs.yml nav lacks {page}"


@pytest.mark.parametrize("module_name", sorted(documented_modules()))
def test_every_public_name_has_an_entry(module_name):
    pages = hooks.api_pages()
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    entries = hooks.entries(module_name, pages)
    assert [name for name, _ in entries] == list(module.__all__)
    assert len(set(module.__all__)) == len(module.__all__), "a name listed twice"
    for name, markdown in entries:
        rendered = re.fullmatch(rf"::: {re.escape(module_name)}\.(\w+)\n", markdown)
        link = re.search(r"\]\[([\w.]+)\]", markdown)
        page = re.search(r"\]\(([\w./]+\.md)\)", markdown)
        if rendered:
            assert rendered[1] == name
        elif link:  # a re-export: the room's page renders it
            owner, _, own_name = link[1].rpartition(".")
            assert own_name == name and owner in pages and name in sys.modules[owner].__all__
            assert getattr(sys.modules[owner], name) is getattr(module, name)
        else:
            assert page, f"{module_name}.{name}: no entry in {markdown!r}"
            assert (DOCS / pages[module_name]).parent.joinpath(page[1]).resolve() == \
                (DOCS / pages[getattr(module, name).__name__]).resolve()


def test_api_pages_expand_to_their_entries():
    # What the build does with a page: the marker becomes the entries, nothing else.
    pages = hooks.api_pages()
    text = (DOCS / pages["innerloop.solvers"]).read_text()
    out = hooks.on_page_markdown(text, None, {"docs_dir": str(DOCS)}, None)
    assert "<!-- public names" not in out
    assert out.count("\n::: innerloop.solvers.") == len(sys.modules["innerloop.solvers"].__all__)


# ---------------------------------------------------------------- the README


def _links(text):
    return re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)


def test_readme_is_a_landing_page_whose_links_exist():
    text = README.read_text()
    assert len(text.splitlines()) < 150
    links = [link for link in _links(text) if "://" not in link]
    assert links, "the README links into the docs"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing


def _without_code(text):
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _page_text(page):
    """A docs page with the results files it includes (pymdownx.snippets)."""
    text = page.read_text()
    included = re.findall(r'^--8<-- "([^":]+)(?::[\w-]+)?"', text, flags=re.MULTILINE)
    return "\n".join([text, *((ROOT / path).read_text() for path in included)])


def _numbers(text):
    return set(re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", text))


def test_every_readme_number_is_on_a_docs_page():
    # Each paragraph or list item of the README: its numbers must be on the docs pages
    # it links to (with the results files they include), or on some docs page if it
    # links to none.
    pages = sorted(DOCS.rglob("*.md"))
    everything = "\n".join(_page_text(p) for p in pages)
    assert "--8<--" in everything and "- command:" in everything  # results included
    chunks = re.split(r"\n\s*\n|\n(?=- )", _without_code(README.read_text()))
    checked, absent = 0, []
    for chunk in chunks:
        linked = [ROOT / link for link in _links(chunk)
                  if link.startswith("docs/") and link.endswith(".md")]
        where = "\n".join(_page_text(p) for p in linked) if linked else everything
        for number in _numbers(chunk):
            checked += 1
            if not re.search(rf"(?<![\w.]){re.escape(number)}(?!\d)", where):
                absent.append((number, [str(p.relative_to(ROOT)) for p in linked]))
    assert checked >= 10, "the README quotes its headline numbers"
    assert not absent, f"README numbers not on the docs pages they link to: {absent}"


def test_included_files_and_sections_exist():
    # pymdownx.snippets: a missing section would include nothing, silently.
    for page in sorted(DOCS.rglob("*.md")):
        for path, section in re.findall(r'^--8<-- "([^":]+)(?::([\w-]+))?"', page.read_text(),
                                        flags=re.MULTILINE):
            text = (ROOT / path).read_text()
            if section:
                body = re.search(rf"--8<-- \[start:{section}\](.*?)--8<-- \[end:{section}\]",
                                 text, flags=re.DOTALL)
                assert body and "```" in body[1], f"{page.name}: {path}:{section}"
