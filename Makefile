# One command checks everything: `make test` builds its own virtualenv, installs the project
# with its test extras, lints, type-checks and runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SRC := $(wildcard issuer subscriber relay watcher keyherald tests bench)

# The demo's venv: the `demo` extra only (no test toolchain), and its bin/ holds `keyherald`.
DEMO_VENV ?= .venv-demo
DEMO_STAMP := $(DEMO_VENV)/.installed

# The floors venv: every runtime dependency at the lowest version pyproject.toml admits.
FLOORS_PYTHON ?= python3.11
FLOORS_VENV ?= .venv-floors

.PHONY: test test-floors test-ha lint mypy pytest demo soak bench clean

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

# The subscriber and issuer tests on the declared floors (.ci/floors.py pins each `>=X` of
# the runtime dependencies to `==X`; the test tools stay unpinned). A floor the code cannot
# run on fails here, not in a service that happens to pin an old release.
test-floors:
	rm -rf $(FLOORS_VENV)
	$(FLOORS_PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOORS_VENV)/bin/python .ci/floors.py pyproject.toml > $(FLOORS_VENV)/floors.txt
	$(FLOORS_VENV)/bin/python -m pip install --quiet -c $(FLOORS_VENV)/floors.txt -e '.[test]'
	$(FLOORS_VENV)/bin/python -m pip check
	$(FLOORS_VENV)/bin/python .ci/floors.py pyproject.toml --check
	$(FLOORS_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/subscriber tests/issuer

# Sentinel and Cluster topologies on loopback, failed over under load (about a minute).
test-ha: $(STAMP)
	$(BIN)/pytest -q -m ha tests/ha

soak: $(STAMP)
	$(BIN)/pytest -q -m soak tests/soak

bench: $(STAMP)
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/fastapi_endpoint.py
	$(BIN)/python bench/issuer_endpoints.py
	$(BIN)/python bench/admin.py
	$(BIN)/python bench/footprint.py
	$(BIN)/python bench/propagation.py
	$(BIN)/python bench/upstream.py

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DEMO_VENV)/bin/python -m pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(DEMO_VENV)/bin/keyherald demo

clean:
	rm -rf $(VENV) $(DEMO_VENV) $(FLOORS_VENV) .mypy_cache .pytest_cache .ruff_cache
