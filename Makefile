# Developer and CI entry points. `make test` and `make demo` set up .venv themselves.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build that `pip` finds locally; a bare `torch` may pull a CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-daemon lint typecheck proto proto-check unit integration bench bench-train chaos clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The framework integrations' extras are installed with torch constrained to $(TORCH) (the
# committed constraints.txt says the same for users' own installs), so their tests run in
# `make test` without pulling another torch.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[torch,isal,dev,bench,huggingface,lightning,data]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m ecsnap.demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	mkdir -p build/typecheck && ln -sfn ../../client build/typecheck/ecsnap
	MYPYPATH=build/typecheck $(BIN)/mypy -p smp -p ecsnap

proto: setup
	$(BIN)/python proto/generate.py

proto-check: setup
	$(BIN)/python proto/generate.py --check

unit: setup
	$(BIN)/python -m pytest -q tests/unit

integration: setup
	$(BIN)/python -m pytest -q tests/integration

test: setup lint typecheck proto-check test-daemon
	$(BIN)/python -m pytest -q tests

# The daemon's tests in an environment without torch: the SMP must not need it.
DAEMON_VENV ?= .venv-daemon
$(DAEMON_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(DAEMON_VENV)
	$(DAEMON_VENV)/bin/pip install -q --upgrade pip
	$(DAEMON_VENV)/bin/pip install -q -e ".[isal,dev]"
	touch $@

test-daemon: $(DAEMON_VENV)/.installed
	$(DAEMON_VENV)/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None and 'torch is installed in $(DAEMON_VENV)')"
	$(DAEMON_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/unit tests/integration

bench: setup
	$(BIN)/smp bench codec
	$(BIN)/ecsnap bench local

# End-to-end: training overhead and recovery time vs torch.save and DCP (a few minutes on 2 cores).
bench-train: setup
	$(BIN)/ecsnap bench train --json docs/bench-train.json --plot docs/bench-train.png

# 100 random faults (trainer kills, SMP restarts, node losses, corrupted bytes, frozen SMPs) on a
# 4-node job that must end bit for bit like an uninterrupted run (about 10 minutes on 2 cores).
chaos: setup
	$(BIN)/ecsnap bench chaos --faults 100 --seed 7

clean:
	rm -rf $(VENV) $(DAEMON_VENV) build .mypy_cache .pytest_cache .ruff_cache
