# The same commands run locally and in CI (.ci/run calls `make test`).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint typecheck unit chaos bench bench-smoke run clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q -m "not integration and not chaos"

# Hostile input and infrastructure faults (needs RabbitMQ and Redis); prints a figures table.
chaos: install
	$(BIN)/pytest -q tests/chaos tests/ingress/test_fuzz_payloads.py \
		tests/ingress/test_fuzz_ingress.py tests/ingress/test_auth_hostile.py \
		tests/worker/test_poison.py

# Lint, types, then every test (unit, integration, chaos) against the local RabbitMQ and Redis.
test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q --durations=15

bench: install
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench

bench-smoke: install
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench --smoke

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
