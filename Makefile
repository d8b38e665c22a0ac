# attrlab: every target creates the virtual environment first when it is missing (or pyproject.toml changed).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: venv test lint book site-check sync bench gpu-check lab clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[book,test,lab,lint]"
	touch $@

venv: $(VENV)/.installed

## the linter, the formatter's check and the type checker (configured in pyproject.toml; also run by pre-commit)
lint: venv
	$(VENV)/bin/ruff check attrlab tests bench book/tools book/_ext
	$(VENV)/bin/ruff format --check attrlab tests bench book/tools book/_ext
	$(VENV)/bin/mypy

## the test suite (what CI runs)
test: venv
	$(PY) -m pytest

## the main job: train and track on the embedded digits data, then build the book into _build/html
book: venv
	$(PY) -m attrlab book

## the built book in headless Chromium: every page renders, figures load, no error output; screenshots in _build/screenshots
site-check: venv
	command -v chromium >/dev/null || command -v google-chrome >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(PY) book/tools/check_site.py

## bring each chapter's jupytext pair (book/<chapter>.md <-> book/<chapter>.ipynb) in step; the newer file wins
sync: venv
	$(VENV)/bin/jupytext --sync $$(grep -l '^jupytext:' book/*.md)

## JupyterLab on the book folder, with the project's settings: a chapter's .md opens as a Jupytext notebook
lab: venv
	JUPYTERLAB_SETTINGS_DIR="$(CURDIR)/.jupyter/lab/user-settings" $(VENV)/bin/jupyter lab book/

## the speed benchmarks: each prints ratios measured side by side in one run
bench: venv
	$(PY) bench/attribution.py
	$(PY) bench/tracking.py
	$(PY) bench/grids.py
	$(PY) bench/quality.py
	$(PY) bench/sanity.py
	$(PY) bench/bcos.py

## on a GPU machine: the CUDA-marked tests and every benchmark in quick mode (about 5 min), report in bench/results/;
## needs no venv or installed package (the repo root goes on PYTHONPATH); exits 2 without a GPU
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) bench/gpu_check.py

clean:
	rm -rf _build runs
