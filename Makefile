# Two commands do all the set-up: `make run` (the pipeline on the embedded digits) and
# `make test`. Both create .venv and install the pinned dependencies the first time only.
#
#   PYTHON=python3.11        interpreter that creates the venv
#   PIP_CONSTRAINTS=file     another lock (e.g. a CPU-only or CUDA torch); default constraints.txt
#   ARGS="--set k=v"         extra arguments for `compalign run`
#   PORT=5000                port of `make ui`

PYTHON ?= python3
VENV ?= .venv
PIP_CONSTRAINTS ?= constraints.txt
PORT ?= 5000
ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test ui repro bench lint clean

$(STAMP): pyproject.toml $(PIP_CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(PIP_CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/compalign run $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(PORT)

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/dvc metrics show

bench: setup
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/compression_costs.py
	$(BIN)/python bench/populations.py

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf artifacts .compalign reports/pipeline mlartifacts mlflow.db
