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

# The unit suite again with the system clock a year ahead (Debian's faketime, LD_PRELOAD): a test
# that mixes a pinned date with the real clock fails here today instead of in CI next year.
test-next-year: setup
	@command -v faketime >/dev/null || { echo "make: needs faketime (apt-get install faketime)" >&2; exit 1; }
	faketime -f '+365d' $(BIN)/pytest -q -p no:cacheprovider --ignore=tests/integration --ignore=tests/chaos

bench: setup
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
