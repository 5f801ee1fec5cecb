# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing and installs what it needs (editable install: see
# docs/architecture.md, the mapped rooms are only importable that way from the
# repository root).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The suite runs on 2 worker processes (pytest-xdist): most of its time is XLA
# compilation, which is single-threaded. `make test PYTEST_ARGS=` runs it serially.
PYTEST_ARGS ?= -n 2
# A test whose xdist worker dies (a segfault inside XLA's compiler: 3 of the last 6 full CI
# runs, each in a different test, none reproducible alone) runs once more on a fresh
# worker; the regex matches no exception, so a test that fails is never rerun.
RERUN_CRASHED := --reruns 1 --only-rerun '(?!)'

.PHONY: demo test lint bench docs clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[test,demo,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m innerloop demo

# The second run: the whole suite again with float64 enabled and strict dtype promotion
# (tests/conftest.py --strict-dtypes), the configuration optimistix tests under, less the
# tests whose computation runs in a child process: it does not inherit the mode, so they
# would repeat the first run exactly.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS) $(RERUN_CRASHED) --durations=25
	$(PY) -m pytest -q $(PYTEST_ARGS) $(RERUN_CRASHED) --durations=25 --strict-dtypes -m "not subprocess"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench,evosax]"
	$(PY) benchmarks/fixed_point.py
	$(PY) benchmarks/unroll.py

# The documentation site into site/; --strict: a broken link, a reference mkdocstrings
# cannot collect, or any warning fails the build.
docs: $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) innerloop-demo .pytest_cache .hypothesis site build/docs-src
