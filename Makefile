# Two commands: `make run` trains the sweep, `make test` runs the tests. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
# 1: the C fast path must build and load (a compile error fails the install, and its tests fail rather than skip).
# On a machine without a C compiler: make test REQUIRE_FASTPATH=0 (the recorder then uses torch ops).
REQUIRE_FASTPATH ?= 1
# The tests run the integrations too (Lightning, transformers, Ray, the browser test's Playwright).
EXTRAS ?= test,lightning,transformers,ray,browser

.PHONY: run test bench install browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when the dependency declarations or the C extension change. The editable install builds the extension
# in place; the old one is removed first so a failed build cannot hide behind it.
$(STAMP): $(BIN)/python pyproject.toml setup.py constraints.txt mlflow_flux/recording/_fastpath.c
	rm -f mlflow_flux/recording/_fastpath*.so
	MLFLOW_FLUX_REQUIRE_FASTPATH=$(REQUIRE_FASTPATH) $(BIN)/pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

# The browser test drives Debian's chromium through Playwright (executable_path; Playwright's own download is not
# used). Installed here when missing and we may (root with apt-get); otherwise the test fails and says how.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium missing: apt-get install chromium (the browser test will fail without it)"

# MLflow's own INFO lines (from `mlflow run` itself) are off unless VERBOSE=1; the sweep ends with the UI's URL.
VERBOSE ?= 0
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_LOGGING_LEVEL=$(if $(filter 1,$(VERBOSE)),INFO,WARNING) \
	  $(BIN)/mlflow run . --env-manager local $(if $(filter 1,$(VERBOSE)),-P verbose=true) $(ARGS)

# The whole suite under `python -OO` (no docstrings, no asserts: nothing of ours may lean on them), then the doctests,
# every test not marked slow, and those that need docstrings (transformers' models) in plain python: both modes,
# without running the end-to-end tests twice.
# 1: the browser test fails (not skips) without chromium and Playwright.
REQUIRE_BROWSER ?= 1
TEST_ENV := PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_FLUX_REQUIRE_FASTPATH=$(REQUIRE_FASTPATH) \
	MLFLOW_FLUX_REQUIRE_BROWSER=$(REQUIRE_BROWSER)
test: $(STAMP) browser
	$(TEST_ENV) $(BIN)/python -OO -m pytest -p no:cacheprovider $(PYTEST_ARGS)
	$(TEST_ENV) $(BIN)/python -m pytest -p no:cacheprovider -m "not slow or docstrings" $(PYTEST_ARGS)

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/recorder.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/transformer.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/sweep.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/report.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/metric_logging.py --paper-rounds 0

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts test-artifacts
