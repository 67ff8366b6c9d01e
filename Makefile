# Two entry points, each bootstrapping .venv from a fresh clone:
#   make demo   - the main job
#   make test   - the test suite (what CI runs through .ci/run)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL ?= 2

$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,beam]"
	touch $@

.PHONY: venv demo test
venv: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/dns-tf demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q
