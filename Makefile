# Two commands do everything on a fresh machine with Python 3.11: `make demo` and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed
# pytest-xdist workers: one per core plus one (several slow tests wait on subprocesses and servers); one torch
# thread each (tests/conftest.py).
WORKERS ?= $(shell python3 -c "import os; print((os.cpu_count() or 1) + 1)")

.PHONY: install demo test test-fast test-full mlflow-ui tracking-server clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/geocnn demo

# The suite CI runs: every test but the full-length trainings of the shipped real-data configs.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadgroup -m "not full" --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadgroup -m "not slow and not full"

# The shipped real-data configs end to end against their published figures (about 20 CPU-minutes).
test-full: $(STAMP)
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadgroup -m full --durations=0 -s

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///data/mlflow/mlflow.db --host 127.0.0.1 --port 5000

tracking-server: $(STAMP)
	$(BIN)/geocnn tracking-server --port 5000

clean:
	rm -rf data/runs data/stores data/mlflow data/demo data/prefect data/predictions
