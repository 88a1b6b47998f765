# hpa_kit developer targets. `make test` is the test command; it installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hpa_kit-installed
SAMPLES ?= $(abspath ../shared/data/hpa-samples)
PYTEST_ARGS ?=
DEMO_OUT ?= demo-out
DEMO_ARGS ?=

export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install test lint format demo clean

install: $(STAMP)

# What `make install` says before it starts: the versions come from requirements-pinned.txt;
# the size and time were measured on a fresh venv on a 2-core machine with the local package
# indexes of REFERENCE.md section 6 (BENCHMARKS.md, "Install").
TORCH_PIN := $(shell sed -n 's/^torch==//p' requirements-pinned.txt)
TORCHVISION_PIN := $(shell sed -n 's/^torchvision==//p' requirements-pinned.txt)
PINNED_COUNT := $(shell grep -c '^[A-Za-z]' requirements-pinned.txt)
INSTALL_SIZE ?= about 6.2 GB
INSTALL_TIME ?= 4-7 min

# Exact pins from requirements-pinned.txt (REFERENCE.md section 6), then the package editable.
# pip runs quietly; each step and the result (time taken, size of the venv) are printed.
$(STAMP): requirements-pinned.txt setup.cfg pyproject.toml
	@echo "installing into $(VENV): torch $(TORCH_PIN) + torchvision $(TORCHVISION_PIN) (CUDA build," \
	  "$(INSTALL_SIZE) in $(VENV), $(INSTALL_TIME) on a first install), the other" \
	  "$$(( $(PINNED_COUNT) - 2 )) pins of requirements-pinned.txt, then hpa_kit (editable) and its dev tools"
	@set -e; start=$$(date +%s); \
	test -x $(PY) || { echo "[1/4] creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }; \
	echo "[2/4] pip, setuptools, wheel"; \
	$(PY) -m pip install --quiet --upgrade "pip>=24" "setuptools>=64" wheel; \
	echo "[3/4] the pinned packages (the torch download and unpacking take most of the time)"; \
	$(PY) -m pip install --quiet -r requirements-pinned.txt; \
	echo "[4/4] hpa_kit (editable) and its dev tools"; \
	$(PY) -m pip install --quiet -e '.[dev]'; \
	touch $(STAMP); \
	echo "installed in $$(( $$(date +%s) - start )) s; $(VENV) holds $$(du -sh $(VENV)/. | cut -f1)"

# The tests run offline; the wheels of Kaggle's Python they check are fetched first, once.
test: install kaggle-wheel-cache
	@if [ -d "$(SAMPLES)" ]; then export HPA_KIT_SAMPLES="$(SAMPLES)"; \
	  else echo "note: $(SAMPLES) not found; real-data tests will be skipped"; fi; \
	export HPA_KIT_KAGGLE_WHEELS="$(abspath $(KAGGLE_WHEEL_CACHE))"; \
	$(PY) -m pytest $(PYTEST_ARGS)

# The whole pipeline on synthetic data, CPU only (README "Start here").
demo: install
	$(VENV)/bin/hpa-kit demo --out $(DEMO_OUT) $(DEMO_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check hpa_kit tests benchmarks

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format hpa_kit tests benchmarks

clean:
	rm -rf build dist *.egg-info .pytest_cache

# ---------------------------------------------------------------------------------------
# Kaggle delivery (README "Kaggle"). Owner and slugs come from variables: KAGGLE_USERNAME
# from the environment or the command line (`make push-kernel KAGGLE_USERNAME=you`).
# Credentials (KAGGLE_KEY, KAGGLE_API_TOKEN or kaggle.json) are found by the kaggle client;
# no recipe line names them, and hpa_kit.delivery asks the client for them only to remove
# them from everything it and the client print. Every request has a timeout: 60 s per API
# call, 300 s for a stalled upload; set HPA_KIT_KAGGLE_TIMEOUT / HPA_KIT_KAGGLE_UPLOAD_TIMEOUT
# (seconds) in the environment to change them.
KAGGLE_USERNAME ?=
KERNEL_SLUG ?= hpa-inference
KERNEL_TITLE ?= $(KERNEL_SLUG)
KERNEL_NOTEBOOK ?= notebooks/hpa-inference.py
KERNEL_TEMPLATE ?= kernel_metadata/inference.kernel-metadata.json
KERNEL_DIR ?= build/kernel/$(KERNEL_SLUG)
WHEELS_SLUG ?= hpa-kit-wheels
WHEELS_TITLE ?= hpa_kit wheels
WHEELS_DATASET ?= $(KAGGLE_USERNAME)/$(WHEELS_SLUG)
WHEELS_TEMPLATE ?= kernel_metadata/wheels.dataset-metadata.json
SEG_WEIGHTS_DATASET ?= $(KAGGLE_USERNAME)/hpa-cellseg-weights
CHECKPOINTS_DATASET ?= $(KAGGLE_USERNAME)/hpa-kit-checkpoints
WHEELS_DIR ?= build/wheels
DATASET_DIR ?= build/dataset/$(WHEELS_SLUG)
# Kaggle's notebook image (REFERENCE.md section 1): its Python and platform tags.
KAGGLE_PYTHON ?= 3.12
KAGGLE_PLATFORMS ?= manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_28_x86_64
# Run-time dependencies the Kaggle image lacks or may lack (pip skips those it has).
KAGGLE_EXTRA_WHEELS ?= iterative-stratification==0.1.9 pycocotools==2.0.11 PyYAML==6.0.4
# More pip specs to build with `pip wheel --no-deps`, e.g. hpacellseg and pytorch_zoo from git.
WHEEL_SOURCES ?=
# Extra options for the downloads of `make wheels` (e.g. --no-index --find-links DIR).
WHEELS_PIP_ARGS ?=
# Where `make test` keeps the downloads of `make wheels` so that the tests run offline.
KAGGLE_WHEEL_CACHE ?= build/kaggle-wheel-cache
# push-dataset: auto (version if the dataset exists, else create), create or version.
PUSH_MODE ?= auto
DATASET_NOTES ?= hpa_kit $(shell git describe --always --dirty 2>/dev/null)
DELIVERY := $(PY) -m hpa_kit.delivery

define _need_kaggle_username
	@if [ -z "$(KAGGLE_USERNAME)" ]; then \
	  echo "error: KAGGLE_USERNAME is not set (export it or run: make $@ KAGGLE_USERNAME=you)" >&2; \
	  exit 2; fi
endef

.PHONY: wheel wheels check-wheels kaggle-wheel-cache kernel push-kernel push-dataset

# $(call _download_extras,DIR,PIP_ARGS): $(KAGGLE_EXTRA_WHEELS) for Kaggle's Python, then
# for this one (an offline install here, as the tests do).
_download_extras = $(PY) -m pip download --quiet --no-deps --only-binary=:all: $(2) \
	  --python-version $(KAGGLE_PYTHON) --implementation cp \
	  $(addprefix --platform ,$(KAGGLE_PLATFORMS)) -d $(1) $(KAGGLE_EXTRA_WHEELS) && \
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: $(2) -d $(1) $(KAGGLE_EXTRA_WHEELS)

# The hpa_kit wheel alone, into $(WHEELS_DIR) (older hpa_kit wheels there are removed).
wheel: | $(STAMP)
	@mkdir -p $(WHEELS_DIR)
	rm -f $(WHEELS_DIR)/hpa_kit-*.whl
	rm -rf build/lib build/bdist.*
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w $(WHEELS_DIR) .

# A fresh $(WHEELS_DIR): hpa_kit plus $(KAGGLE_EXTRA_WHEELS) for Kaggle's Python and the local
# one, then checked with check-wheels.
wheels: | $(STAMP)
	rm -rf $(WHEELS_DIR)
	$(MAKE) --no-print-directory wheel WHEELS_DIR=$(WHEELS_DIR)
	$(call _download_extras,$(WHEELS_DIR),$(WHEELS_PIP_ARGS))
	$(if $(strip $(WHEEL_SOURCES)),$(PY) -m pip wheel --quiet --no-deps -w $(WHEELS_DIR) $(WHEEL_SOURCES))
	@ls -1 $(WHEELS_DIR)
	@$(MAKE) --no-print-directory check-wheels WHEELS_DIR=$(WHEELS_DIR)

# Can Kaggle install $(WHEELS_DIR)? pip, offline, must find a wheel of hpa_kit and of each
# $(KAGGLE_EXTRA_WHEELS) for CPython $(KAGGLE_PYTHON) on $(KAGGLE_PLATFORMS), each resolved
# alone (--no-deps): the rest of hpa_kit's dependencies (torch, timm, ...) come with the image.
check-wheels: | $(STAMP)
	$(DELIVERY) check-wheels $(WHEELS_DIR) --python-version $(KAGGLE_PYTHON) \
	  $(addprefix --platform ,$(KAGGLE_PLATFORMS)) $(addprefix --require ,hpa_kit $(KAGGLE_EXTRA_WHEELS))

# The downloads of `make wheels` in $(KAGGLE_WHEEL_CACHE), fetched once (again when
# KAGGLE_PYTHON, KAGGLE_PLATFORMS or KAGGLE_EXTRA_WHEELS change); `make test` needs them.
_WHEEL_CACHE_KEY = $(KAGGLE_PYTHON) $(KAGGLE_PLATFORMS) $(KAGGLE_EXTRA_WHEELS)
kaggle-wheel-cache: | $(STAMP)
	@if [ "$$(cat $(KAGGLE_WHEEL_CACHE)/.key 2>/dev/null)" != "$(_WHEEL_CACHE_KEY)" ]; then \
	  echo "fetching the wheels of KAGGLE_EXTRA_WHEELS into $(KAGGLE_WHEEL_CACHE) (once)"; \
	  mkdir -p $(KAGGLE_WHEEL_CACHE) && rm -f $(KAGGLE_WHEEL_CACHE)/*.whl $(KAGGLE_WHEEL_CACHE)/.key && \
	  $(call _download_extras,$(KAGGLE_WHEEL_CACHE),) && \
	  echo "$(_WHEEL_CACHE_KEY)" > $(KAGGLE_WHEEL_CACHE)/.key; fi

# build/kernel/<slug>/: the inference notebook as .ipynb + kernel-metadata.json.
kernel: | $(STAMP)
	$(_need_kaggle_username)
	$(DELIVERY) render-kernel $(KERNEL_NOTEBOOK) --template $(KERNEL_TEMPLATE) --out $(KERNEL_DIR) \
	  --set 'OWNER=$(KAGGLE_USERNAME)' --set 'KERNEL_SLUG=$(KERNEL_SLUG)' \
	  --set 'KERNEL_TITLE=$(KERNEL_TITLE)' --set 'WHEELS_DATASET=$(WHEELS_DATASET)' \
	  --set 'SEG_WEIGHTS_DATASET=$(SEG_WEIGHTS_DATASET)' \
	  --set 'CHECKPOINTS_DATASET=$(CHECKPOINTS_DATASET)'

push-kernel: kernel
	$(DELIVERY) push-kernel $(KERNEL_DIR)

# Checks and stages the wheels of $(WHEELS_DIR) (run `make wheels` first; hpa_kit and every
# $(KAGGLE_EXTRA_WHEELS) must be there for Kaggle's Python) and creates or versions the dataset.
push-dataset: | $(STAMP)
	$(_need_kaggle_username)
	@$(MAKE) --no-print-directory check-wheels WHEELS_DIR=$(WHEELS_DIR)
	$(DELIVERY) stage-dataset $(WHEELS_DIR) --template $(WHEELS_TEMPLATE) --out $(DATASET_DIR) \
	  $(addprefix --require ,$(KAGGLE_EXTRA_WHEELS)) \
	  --set 'WHEELS_DATASET=$(WHEELS_DATASET)' --set 'WHEELS_TITLE=$(WHEELS_TITLE)'
	$(DELIVERY) push-dataset $(DATASET_DIR) --mode $(PUSH_MODE) --notes '$(DATASET_NOTES)'
