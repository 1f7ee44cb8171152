# Two commands do everything on a fresh machine with Python 3.11: `make demo` and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

.PHONY: install demo test test-fast mlflow-ui tracking-server clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/geocnn demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadgroup

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadgroup -m "not slow"

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///data/mlflow/mlflow.db --host 127.0.0.1 --port 5000

tracking-server: $(STAMP)
	$(BIN)/geocnn tracking-server --port 5000

clean:
	rm -rf data/runs data/stores data/mlflow data/demo data/prefect data/predictions
