# Two commands for a newcomer: `make dev` runs the whole system, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup dev test test-next-year lint bench clean

$(BIN)/pruner: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(BIN)/pruner

setup: $(BIN)/pruner

dev: setup
	$(BIN)/pruner dev

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: lint
	$(BIN)/pytest -q
	$(MAKE) --no-print-directory test-next-year

# The unit suite again with the wall clock a year ahead (tests/conftest.py, time-machine): a test
# that mixes a pinned date with the real clock fails here today instead of in CI next year.
# (Debian's faketime did this until a faked monotonic clock made timed waits sleep a year.)
test-next-year: setup
	PRUNER_TEST_CLOCK_AHEAD_DAYS=365 $(BIN)/pytest -q -p no:cacheprovider --ignore=tests/integration --ignore=tests/chaos

bench: setup
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
