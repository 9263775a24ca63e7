PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest browser bench bench-quick soak clean

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

# The dashboard's browser tests drive Debian's chromium. Where we may (root, apt-get, and not
# AIOREDQ_NO_APT=1) it is installed once; elsewhere those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$AIOREDQ_NO_APT" ] || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	echo "chromium is not installed: the dashboard's browser tests will be skipped"

pytest: $(STAMP) browser
	$(BIN)/pytest -n $(PYTEST_JOBS)

test: lint typecheck pytest

soak: $(STAMP)
	AIOREDQ_SOAK=1 $(BIN)/pytest -m slow

# make bench ARGS="--quick" (or any options of python -m benchmarks); make bench-quick
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
