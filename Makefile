# One command checks everything: `make test` builds its own virtualenv, installs the project
# with its test extras, lints, type-checks and runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SRC := $(wildcard issuer subscriber relay watcher keyherald tests bench)

.PHONY: test lint mypy pytest demo soak bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP) lint mypy pytest

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

mypy: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

soak: $(STAMP)
	$(BIN)/pytest -q -m soak tests/soak

bench: $(STAMP)
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/footprint.py
	$(BIN)/python bench/propagation.py
	$(BIN)/python bench/upstream.py

demo: $(STAMP)
	$(BIN)/keyherald demo

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
