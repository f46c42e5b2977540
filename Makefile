# The two commands a new user needs: `make up` (run the stack) and `make test` (run the tests).
# Both create .venv when missing and install what they need; a rerun with nothing changed
# only checks a stamp file.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# torch first and pinned: a range resolved later would pull a multi-GB CUDA build
# (docs/decisions.md). The CPU wheel is what this machine's index serves for 2.13.0.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install weights up test test-fast lint format bench schemas clean browser

help:
	@echo "make up      set up and run the stack (magsrl up)"
	@echo "make test    set up and run lint + the test suite"
	@echo "make test-fast  lint + the tests not marked slow (under a minute; no real processes)"
	@echo "make bench   run the benchmarks (results: docs/benchmarks.md)"
	@echo "make lint | format | schemas | clean"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[all,dev]'
	@if $(PY) -c "import torchvision" 2>/dev/null; then \
	  echo "torchvision is installed in $(VENV) and breaks transformers on CPU; remove it"; exit 1; fi
	touch $@

install: $(STAMP)

# Converted weights live in the user cache (MAGSRL_WEIGHTS_DIR), outside the venv, so this
# always runs; `magsrl weights` is idempotent and returns in about a second when nothing is missing.
weights: $(STAMP)
	$(BIN)/magsrl weights

up: weights
	$(BIN)/magsrl up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schemas: $(STAMP)
	$(PY) -m magsrl.proto.generate

# The trace viewer's browser test drives Debian's Chromium: Playwright's own browser download
# cannot work offline. Installed once, as root or through sudo.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  echo "installing Debian's chromium (the trace viewer's browser test)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
	    || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }; fi

test: weights lint browser
	$(PY) -m pytest $(PYTEST_ARGS)

# The loop while editing: lint and every test not marked slow (pure functions and in-process
# service tests), under 60 s on 2 cores. `make test` stays the whole suite, and what CI runs.
FAST_MARKERS := not slow and not compose and not gpu

test-fast: weights lint
	$(PY) -m pytest -q -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

bench: weights
	$(PY) bench/magnifier.py
	$(PY) bench/policy.py
	$(PY) bench/judge.py
	$(PY) bench/trainer.py
	$(PY) bench/rollout_data.py
	$(PY) bench/eval.py
	$(PY) bench/rollouts.py
	$(PY) bench/policy_io.py
	$(PY) bench/async_steps.py

clean:
	rm -rf $(VENV) .magsrl .pytest_cache .ruff_cache build *.egg-info
