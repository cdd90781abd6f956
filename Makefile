# Fleetdesk: the two commands are `make run` (the platform) and `make test` (every test layer).
SHELL := /bin/bash
# uv from PATH; on a machine without it, a private copy is installed once under the cache
# (a virtual environment, so it needs neither root nor a writable system Python).
TOOLS_DIR ?= $(or $(FLEETDESK_CACHE),$(HOME)/.cache/fleetdesk)/tools
# Trust the machine's certificate store (a TLS-inspecting proxy's CA lives there), not only
# uv's built-in roots; UV_NATIVE_TLS is the same switch for older uv versions.
export UV_SYSTEM_CERTS ?= 1
export UV_NATIVE_TLS ?= 1
UV ?= $(or $(shell command -v uv 2>/dev/null),$(TOOLS_DIR)/bin/uv)
# The CPython uv builds the environment on: the fastest 3.11 on the machine, chosen once
# (deploy/local/pick_python.py says why; delete the file to choose again). UV_PYTHON overrides.
PYTHON_CHOICE := $(TOOLS_DIR)/python-choice
# A choice whose interpreter is gone (uninstalled, another machine's cache) is made again.
ifneq ($(wildcard $(PYTHON_CHOICE)),)
ifeq ($(shell p="$$(cat $(PYTHON_CHOICE))"; [ -x "$$p" ] && echo ok),)
$(shell rm -f $(PYTHON_CHOICE))
endif
endif
ifndef UV_PYTHON
export UV_PYTHON = $(shell cat $(PYTHON_CHOICE) 2>/dev/null)
endif
PYTEST_ARGS ?=

.PHONY: install run test test-unit test-integration test-e2e lint format asyncapi bench infra-fetch infra-stop

$(TOOLS_DIR)/bin/uv:
	@echo "uv not found: installing it into $(TOOLS_DIR) (once per machine)"
	python3 -m venv $(TOOLS_DIR)
	$(TOOLS_DIR)/bin/python -m pip install --quiet --disable-pip-version-check uv

$(PYTHON_CHOICE):
	@mkdir -p $(TOOLS_DIR)
	@echo "choosing the fastest CPython 3.11 on this machine (once)"
	python3 deploy/local/pick_python.py > $@.tmp && mv $@.tmp $@

install: | $(UV) $(PYTHON_CHOICE)
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
	$(UV) run --frozen python tests/perf/bench_store.py
	$(UV) run --frozen python tests/perf/bench_ferretdb_gc.py
	$(UV) run --frozen python tests/perf/bench_outbox.py
	$(UV) run --frozen python tests/perf/bench_tickets.py
	$(UV) run --frozen python tests/perf/bench_devices.py
	$(UV) run --frozen python tests/perf/bench_devices_list.py
	$(UV) run --frozen python tests/perf/bench_meters.py
	$(UV) run --frozen python tests/perf/bench_meters_floor.py
	$(UV) run --frozen python tests/perf/bench_meters_state.py
	$(UV) run --frozen python tests/perf/bench_meters_history.py
	$(UV) run --frozen python tests/perf/bench_notify.py

infra-fetch: install
	$(UV) run --frozen python deploy/local/infra.py fetch
