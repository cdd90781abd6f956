# Fleetdesk: the two commands are `make run` (the platform) and `make test` (every test layer).
SHELL := /bin/bash
UV ?= uv
PYTEST_ARGS ?=

.PHONY: install run test test-unit test-integration test-e2e lint format asyncapi bench infra-fetch infra-stop

install:
	$(UV) sync --frozen

run: install
	$(UV) run --frozen python deploy/local/run_platform.py

# pytest exits 5 when it collected no test; that is a failure here too.
test: install
	$(UV) run --frozen pytest tests $(PYTEST_ARGS)

test-unit: install
	$(UV) run --frozen pytest tests/unit $(PYTEST_ARGS)

test-integration: install
	$(UV) run --frozen pytest tests/integration $(PYTEST_ARGS)

test-e2e: install
	$(UV) run --frozen pytest tests/e2e $(PYTEST_ARGS)

lint: install
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy shared services deploy/local
	$(UV) run --frozen python -m shared.asyncapi --check

format: install
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

asyncapi: install
	$(UV) run --frozen python -m shared.asyncapi

bench: install
	$(UV) run --frozen python tests/perf/bench_bus.py

infra-fetch: install
	$(UV) run --frozen python deploy/local/infra.py fetch
