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
EXTRAS ?= test,query,lightning,transformers,ray,browser,stack

.PHONY: run test bench install browser stack clean

# The explorer page's JavaScript is linted (ESLint, recommended rules) and its pure functions tested with node's own
# test runner; the linter comes from the npm registry, pinned by package-lock.json.
NODE_STAMP := node_modules/.installed
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $(NODE_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when the dependency declarations or the C extension change. The editable install builds the extension
# in place; the old one is removed first so a failed build cannot hide behind it.
$(STAMP): $(BIN)/python pyproject.toml setup.py constraints.txt mlflow_flux/recording/_fastpath.c mlflow_flux/statistics.py
	rm -f mlflow_flux/recording/_fastpath*.so
	MLFLOW_FLUX_REQUIRE_FASTPATH=$(REQUIRE_FASTPATH) $(BIN)/pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

# The -OO pass's bytecode, compiled once. pip writes only plain .pyc files, and where PYTHONDONTWRITEBYTECODE is set
# (as on this project's machines) every `python -OO` process -- the pytest pass and each child it starts -- would
# compile torch, MLflow and pandas from source again: `import torch, mlflow` 10.8 s against 4.5 s. A few packages
# ship files that are not Python 3 (templates, test data), so compileall's exit status says nothing here.
OPT2_STAMP := $(VENV)/.compiled-OO
$(OPT2_STAMP): $(STAMP)
	-$(BIN)/python -OO -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1
	touch $(OPT2_STAMP)

install: $(STAMP)

# Polars, for the one test that reads a trace with it, is installed beside the environment, not in it: `import mlflow`
# imports every dataframe library it finds, and Polars costs ~0.3 s of CPU in each of the hundreds of interpreters
# the suite starts (variants, servers, CLIs). The test reads the file with it in a child process.
READERS := $(VENV)/readers
READERS_STAMP := $(READERS)/.installed
$(READERS_STAMP): $(BIN)/python constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt --target $(READERS) --upgrade polars
	touch $(READERS_STAMP)

# The browser test drives Debian's chromium through Playwright (executable_path; Playwright's own download is not
# used). Installed here when missing and we may (root with apt-get); otherwise the test fails and says how.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium missing: apt-get install chromium (the browser test will fail without it)"

# The team-stack tests start PostgreSQL from Debian's package (tests/stack.py): installed here when missing and we
# may (root with apt-get); otherwise those tests fail (REQUIRE_STACK=1) and say how.
stack:
	@[ -x /usr/lib/postgresql/15/bin/postgres ] || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1; }; }; } || \
	  echo "postgresql missing: apt-get install postgresql (the team-stack tests will fail without it)"

# MLflow's own INFO lines (from `mlflow run` itself) are off unless VERBOSE=1; the sweep ends with the UI's URL.
VERBOSE ?= 0
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_LOGGING_LEVEL=$(if $(filter 1,$(VERBOSE)),INFO,WARNING) \
	  $(BIN)/mlflow run . --env-manager local $(if $(filter 1,$(VERBOSE)),-P verbose=true) $(ARGS)

# Lint first (ruff, configured in pyproject.toml: zero findings), then the whole suite under `python -OO` (no
# docstrings, no asserts: nothing of ours may lean on them), then what -OO cannot run in plain python: the doctests
# and the tests that need docstrings (transformers' models). The slowest tests are listed (--durations).
# The -OO pass runs on TEST_WORKERS pytest-xdist workers, each a `python -OO` (the flag, not PYTHONOPTIMIZE, which
# Ray's own processes would inherit and break on), a test module per worker at a time (--dist loadscope: a
# module's fixtures, the sweep test_compare shares, start once). One process left a core idle 35-40% of the time
# (tests that wait on one child, a server or a sweep's last variant): 888 s -> 674 s for that pass here.
TEST_WORKERS ?= 2
# 1: the browser test fails (not skips) without chromium and Playwright.
REQUIRE_BROWSER ?= 1
# 1: the team-stack tests fail (not skip) without PostgreSQL, moto and MLflow's auth app.
REQUIRE_STACK ?= 1
TEST_ENV := PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_FLUX_REQUIRE_FASTPATH=$(REQUIRE_FASTPATH) \
	MLFLOW_FLUX_REQUIRE_BROWSER=$(REQUIRE_BROWSER) MLFLOW_FLUX_REQUIRE_STACK=$(REQUIRE_STACK) \
	MLFLOW_FLUX_TEST_READERS=$(CURDIR)/$(READERS)
test: $(STAMP) $(OPT2_STAMP) $(READERS_STAMP) $(NODE_STAMP) browser stack
	$(BIN)/ruff check .
	npx --no-install eslint mlflow_flux/explorer/static tests/explorer/js eslint.config.js
	node --test tests/explorer/js/
	$(TEST_ENV) $(BIN)/python -m pytest -p no:cacheprovider --dist loadscope \
	  -d --tx "$(TEST_WORKERS)*popen//python=$(CURDIR)/$(BIN)/python -OO" $(PYTEST_ARGS)
	$(TEST_ENV) $(BIN)/python -m pytest -p no:cacheprovider mlflow_flux $(PYTEST_ARGS)
	$(TEST_ENV) $(BIN)/python -m pytest -p no:cacheprovider -m docstrings -n $(TEST_WORKERS) --dist loadscope tests \
	  $(PYTEST_ARGS)

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/recorder.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/transformer.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/sweep.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/report.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/metric_logging.py --paper-rounds 0
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/big_model.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/explorer.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/query.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/recycling.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/redundancy.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/twins.py

clean:
	rm -rf $(VENV) node_modules mlflow.db mlruns mlartifacts test-artifacts
