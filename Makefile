# Two commands for a newcomer: `make run` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= $(if $(wildcard settings.toml),settings.toml,settings.example.toml)

.PHONY: run test lint bench check clean

$(BIN)/sitegpt-bridge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

run: $(BIN)/sitegpt-bridge
	$(BIN)/sitegpt-bridge serve --config $(CONFIG)

check: $(BIN)/sitegpt-bridge
	$(BIN)/sitegpt-bridge check --config $(CONFIG)

test: $(BIN)/sitegpt-bridge
	$(BIN)/ruff check bridge tests bench
	$(BIN)/python -m pytest -q

bench: $(BIN)/sitegpt-bridge
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
