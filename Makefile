# Two commands do all the set-up: `make run` (the pipeline on the embedded digits) and
# `make test`. Both create .venv and install the pinned dependencies the first time only.
#
#   PYTHON=python3.11        interpreter that creates the venv
#   PIP_CONSTRAINTS=file     another lock (e.g. a CPU-only or CUDA torch); default constraints.txt
#   ARGS="--set k=v"         extra arguments for `compalign run` (for `make test`: pytest's)
#   TEST_WORKERS=2           pytest-xdist processes of `make test` (auto: one per core); each
#                            takes whole test files, so a module's fixtures run once, in the
#                            order tests/conftest.py gives (heaviest first: --no-loadscope-reorder
#                            keeps it; xdist would otherwise order files by their number of tests)
#   PORT=5000                port of `make ui`
#   DOCS_PORT=8000           port of `make docs-serve`

PYTHON ?= python3
VENV ?= .venv
PIP_CONSTRAINTS ?= constraints.txt
PORT ?= 5000
DOCS_PORT ?= 8000
ARGS ?=
TEST_WORKERS ?= 2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# apt-get needs root: sudo only for another user (env: sudo drops the caller's variables)
APT := $(shell [ "$$(id -u)" = 0 ] || echo sudo) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: setup run test ui repro bench bench-overhead lint clean browser docs docs-serve

$(STAMP): pyproject.toml $(PIP_CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(PIP_CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/compalign run $(ARGS)

test: setup browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

ui: setup
	@echo "MLflow UI at http://127.0.0.1:$(PORT) (Ctrl-C stops it)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(PORT)

# The MLflow UI test drives Debian's Chromium through Playwright (never `playwright install`:
# it downloads browsers from outside the package registries). The first install can fail on
# stale package lists: then update them and try again.
browser:
	@test -x /usr/bin/chromium || $(APT) install -y --no-install-recommends chromium \
		|| { $(APT) update && $(APT) install -y --no-install-recommends chromium; }

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/dvc metrics show

# bench/overhead.py: orchestration + tracking + store against the same work as plain core calls,
# per stage and whole; (1 worker x N threads) against (N workers x 1 thread); cached reruns
bench-overhead: setup
	$(BIN)/python bench/overhead.py $(ARGS)

bench: setup
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/threads.py
	$(BIN)/python bench/allocation.py
	$(BIN)/python bench/compression_costs.py
	$(BIN)/python bench/populations.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/gpu.py

# The docs site (mkdocs.yml, docs/): built into site/ with --strict, as tests/test_docs.py builds
# it; the reference pages are generated from the code (docs/hooks.py)
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: setup
	@echo "Docs at http://127.0.0.1:$(DOCS_PORT) (Ctrl-C stops it)"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf artifacts .compalign reports/pipeline mlartifacts mlflow.db site
