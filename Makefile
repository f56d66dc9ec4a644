# Two commands do everything: `make demo` (set up, start the stack, run the main job) and
# `make test` (set up, lint, run every test). See README.md.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(PY) -m mlpipeline

.PHONY: setup demo up down status logs test lint test-sqlite test-postgres bench lock clean screenshots

setup:
	@scripts/bootstrap.sh

demo: setup
	@$(CLI) demo

up: setup
	@$(CLI) up

down:
	@if [ -x $(PY) ]; then $(CLI) down; fi

status: setup
	@$(CLI) status

logs: setup
	@$(CLI) logs $(S)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The whole suite: lint, everything on the embedded defaults (SQLite metadata DB), then the
# Airflow-metadata tests again on PostgreSQL (127.0.0.1:5432 or MLP_TEST_POSTGRES_URL).
test: setup lint
	$(PY) -m pytest
	$(PY) -m pytest -m metadata --metadata-db=postgres

# The runbook's pictures (docs/RUNBOOK.md): the browser tests on a fresh demo stack write their
# screenshots to docs/screenshots; commit them when they change.
screenshots: setup
	UI_SCREENSHOTS=$(CURDIR)/docs/screenshots $(PY) -m pytest tests/e2e/test_stack_demo.py tests/ui

bench: setup
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

lock:
	$(VENV)/bin/uv pip compile --python-version 3.11 --no-header requirements.txt -o requirements-lock.txt
	$(VENV)/bin/uv pip compile --python-version 3.11 --no-header requirements-dev.txt \
	  -c requirements-lock.txt -o requirements-dev-lock.txt

clean: down
	rm -rf .local
