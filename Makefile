# Quickstart: `make demo` then `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo reproduce test test-all ui clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: install
	$(BIN)/wmh demo

reproduce: install  # the paper's experiments at demo scale (< 1 h on 2 cores), resumable
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/mlflow run . --env-manager local -e reproduce -P scale=demo

# Both cores: two pytest-xdist workers, each test module (the modules sharing the tiny
# synthetic cohort together) on one worker, the longest first (tests/conftest.py);
# TensorFlow gets one thread per worker. `make test XDIST=` runs the suite in one process.
XDIST ?= -n 2 --dist loadfile

test: install
	$(BIN)/python -m pytest -q $(XDIST)

test-all: install
	$(BIN)/python -m pytest -q $(XDIST) -m "slow or not slow"

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf data_cache mlruns mlartifacts outputs
