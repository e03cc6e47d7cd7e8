# make demo — set up .venv if needed, then run the main job on the embedded default model.
# make test — set up .venv and the test-only tools if needed, then run the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# One pytest worker per core: the suite's real processes (servers, workers, killed runs) wait on each other
# as much as they compute.
WORKERS ?= auto

.PHONY: setup test-setup browser go sandbox demo test test-fast docs docs-serve clean

# What using tunelab needs, and nothing more.
setup: $(STAMP)

# Installing torch==2.13.0 first, by itself, makes pip take the CPU build these machines carry instead of
# resolving a multi-GB CUDA build as a dependency of something else. Modules are byte-compiled as they are
# installed (pip's default): these machines set PYTHONDONTWRITEBYTECODE, so a module not compiled here
# would be compiled again by every process that imports it.
PIP_INSTALL := $(BIN)/python -m pip install --quiet
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -c requirements.lock -e .
	touch $(STAMP)

# What only the tests (and the docs build) need: the dev extra, headless Chromium for the browser tests,
# Go's text/template for the Modelfile test, and bubblewrap, the sandbox python graders run in (Debian's
# packages; installing them needs root, as on CI). Users who run python graders install bubblewrap
# themselves (docs/graders.md).
test-setup: $(DEV_STAMP) browser go sandbox

$(DEV_STAMP): $(STAMP)
	$(PIP_INSTALL) -c requirements.lock -e '.[dev]'
	touch $(DEV_STAMP)

browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	    { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }; } || \
	  echo "chromium is not installed and cannot be installed here (needs root and apt); the browser tests will fail"

go:
	@command -v go >/dev/null || \
	  { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	    { apt-get install -y -q golang-go >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q golang-go >/dev/null; }; }; } || \
	  echo "go is not installed and cannot be installed here (needs root and apt); the Modelfile template test will fail"

sandbox:
	@command -v bwrap >/dev/null || \
	  { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	    { apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null; }; }; } || \
	  echo "bubblewrap is not installed and cannot be installed here (needs root and apt); the python grader tests will fail"

demo: setup
	$(BIN)/tunelab demo

# The suite starts about 140 Python processes (servers, workers, killed runs, CLI commands) besides its
# own workers: with PYTHONDONTWRITEBYTECODE set, as on these machines, each would compile tunelab's modules
# again (0.2 s of CPU a process) and each pytest worker its test modules (2.6 s). Python's default, a
# bytecode cache beside the sources (ignored by git), is kept for the suite's run.
TEST_ENV := PYTHONDONTWRITEBYTECODE=

test: test-setup
	$(TEST_ENV) $(BIN)/python -m pytest -q -rs -n $(WORKERS) --dist load --durations=15

test-fast: test-setup
	$(TEST_ENV) $(BIN)/python -m pytest -q -rs -n $(WORKERS) -m "not slow and not reliability"

docs: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict

docs-serve: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

clean:
	rm -rf runs site .pytest_cache
