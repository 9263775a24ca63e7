PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench soak clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/quickstart.py

lint: $(STAMP)
	$(BIN)/ruff check aioredq tests examples benchmarks
	$(BIN)/ruff format --check aioredq tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# Tests spend most of their time waiting on Redis, leases and subprocesses: three processes,
# each with its own redis-server. A database given by AIOREDQ_TEST_URL is flushed by every
# test, so it is shared by one process only.
PYTEST_JOBS ?= $(if $(AIOREDQ_TEST_URL),0,3)

pytest: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_JOBS)

test: lint typecheck pytest

soak: $(STAMP)
	AIOREDQ_SOAK=1 $(BIN)/pytest -m slow

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
