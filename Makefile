# Quick start: `make demo` (set up, then run the demo session) and `make test` (set up, then run the tests).
# Everything installs into .venv/ at the repository root; .venv/bin/spatial-al exists after either target.
# `make web` serves the browser app on the demo (it renders offscreen through EGL: Debian's libegl1 libegl-mesa0
# libgl1-mesa-dri; its browser tests drive Debian's chromium; .ci/run installs all four).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, so that MONAI's requirement is met by this build and pip fetches no other (CUDA) one.
# On a GPU server, pick the build you need, e.g. make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo web test test-all lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[slicer,test,data,cluster,web,dicom]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/spatial-al demo --output demo-output

web: $(STAMP)
	$(BIN)/spatial-al web --output spatial-al-web

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/spatial-al benchmark throughput --output benchmark-throughput.json

clean:
	rm -rf $(VENV) demo-output spatial-al-web test-artifacts benchmark-*.json .pytest_cache .ruff_cache *.egg-info
