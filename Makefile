# hpa_kit developer targets. `make test` is the test command; it installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hpa_kit-installed
SAMPLES ?= $(abspath ../shared/data/hpa-samples)
PYTEST_ARGS ?=

export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install test lint format clean

install: $(STAMP)

# Exact pins from requirements-pinned.txt (REFERENCE.md section 6), then the package editable.
$(STAMP): requirements-pinned.txt setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" "setuptools>=64" wheel
	$(PY) -m pip install --quiet -r requirements-pinned.txt
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: install
	@if [ -d "$(SAMPLES)" ]; then export HPA_KIT_SAMPLES="$(SAMPLES)"; \
	  else echo "note: $(SAMPLES) not found; real-data tests will be skipped"; fi; \
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check hpa_kit tests benchmarks

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format hpa_kit tests benchmarks

clean:
	rm -rf build dist *.egg-info .pytest_cache
