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

# Reinstall when the dependency declarations or the C extension change.
$(STAMP): $(BIN)/python pyproject.toml setup.py constraints.txt mlflow_flux/_fastpath.c
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/mlflow run . --env-manager local $(ARGS)
	@echo
	@echo "Open the UI on this store:  $(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI)"

# The C fast path must have built here: its tests fail rather than skip.
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_FLUX_REQUIRE_FASTPATH=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/recorder.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/sweep.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts
