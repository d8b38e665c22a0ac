# attrlab: every target creates the virtual environment first when it is missing (or pyproject.toml changed).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: venv test book bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[book,test]"
	touch $@

venv: $(VENV)/.installed

## the test suite (what CI runs)
test: venv
	$(PY) -m pytest

## the main job: train and track on the embedded digits data, then build the book into _build/html
book: venv
	$(PY) -m attrlab book

bench: venv
	$(PY) bench/attribution.py

clean:
	rm -rf _build runs
