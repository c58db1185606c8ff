# crunchql — `make run` serves the embedded default, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck schema bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	@echo "crunchql: the console at http://127.0.0.1:8000/, GraphiQL at http://127.0.0.1:8000/graphql"
	$(BIN)/crunchql serve

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

schema: $(STAMP)
	$(BIN)/crunchql export-schema -o schema.graphql
	$(BIN)/crunchql export-schema --format introspection -o app/static/console/schema.json

bench: $(STAMP)
	$(BIN)/python -m benchmarks.service

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
