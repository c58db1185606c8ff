# crunchql — `make run` serves the embedded default, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test test-under-load lint typecheck schema bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The bench extra: the FastAPI + Celery stack that benchmarks.versus measures crunchql against.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $(BENCH_STAMP)

run: $(STAMP)
	@echo "crunchql: the console at http://127.0.0.1:8000/, GraphiQL at http://127.0.0.1:8000/graphql"
	$(BIN)/crunchql serve

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The suite while another process keeps one core busy, as on a shared CI machine
# (`make test-under-load PYTEST_ARGS=tests/e2e` for the end-to-end tests only).
test-under-load: $(STAMP)
	$(PYTHON) -c 'while True: pass' & busy=$$!; trap 'kill $$busy' EXIT; \
	CI=true $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

schema: $(STAMP)
	$(BIN)/crunchql export-schema -o schema.graphql
	$(BIN)/crunchql export-schema --format introspection -o app/static/console/schema.json

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.service
	taskset -c 1 $(BIN)/python -m benchmarks.subscribers
	$(BIN)/python -m benchmarks.versus
	$(BIN)/python -m benchmarks.versus --crunchql-caps lifted

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
