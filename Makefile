# Two commands: `make run` trains the sweep, `make test` runs the tests. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db

.PHONY: run test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when the dependency declarations change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/mlflow run . --env-manager local $(ARGS)
	@echo
	@echo "Open the UI on this store:  $(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI)"

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/recorder.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/sweep.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts
