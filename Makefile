# Two commands for a newcomer: `make run` and `make test`. Both set up .venv on first use.
# The operator commands have shortcuts too; pass their options in ARGS, e.g.
#   make deliveries ARGS="--status failed"      make send-test ARGS=leads
# Every command reads the settings the way `make run` does: CONFIG=FILE, else $BRIDGE_CONFIG,
# else ./settings.toml, else ./settings.example.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BRIDGE := $(BIN)/sitegpt-bridge
CONFIG ?=
CONFIG_FLAG := $(if $(CONFIG),--config $(CONFIG))
OPERATOR_COMMANDS := check render send-test deliveries retry conversations backup pause resume

.PHONY: run test lint bench screenshots clean $(OPERATOR_COMMANDS)

$(BRIDGE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

run: $(BRIDGE)
	$(BRIDGE) serve $(CONFIG_FLAG) $(ARGS)

# `make send-test` alone calls the messages webhook, as SiteGPT's test button does.
send-test: ARGS ?= messages

$(OPERATOR_COMMANDS): $(BRIDGE)
	$(BRIDGE) $@ $(CONFIG_FLAG) $(ARGS)

# The tests mostly wait (sockets, child processes, leases), so more workers than cores pay.
TEST_WORKERS ?= 4
# Bytecode is cached in .venv even where PYTHONDONTWRITEBYTECODE is set: otherwise every worker
# and every bridge it starts compiles the code and rewrites the tests' asserts again.
TEST_ENV := env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$(abspath $(VENV))/pycache

test: $(BRIDGE)
	$(BIN)/ruff check bridge tests bench
	$(BIN)/mypy bridge
	$(TEST_ENV) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The pictures of docs/console.md, taken by the console's browser tests.
screenshots: $(BRIDGE)
	CONSOLE_SCREENSHOTS=docs/images $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_console_browser.py

bench: $(BRIDGE)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
