# make demo — set up .venv if needed, then run the main job on the embedded default model.
# make test — set up .venv if needed, then run the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser go demo test clean

setup: $(STAMP) browser go

# Headless Chromium for the test that opens the evaluation report in a real browser (Debian's package;
# installing it needs root, as on CI machines).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	    { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }; } || \
	  echo "chromium is not installed and cannot be installed here (needs root and apt); the report's browser test will fail"

# Go's text/template, for the test that renders an Ollama Modelfile's TEMPLATE as Ollama does (Debian's
# golang-go; root, as on CI machines).
go:
	@command -v go >/dev/null || \
	  { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	    { apt-get install -y -q golang-go >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q golang-go >/dev/null; }; }; } || \
	  echo "go is not installed and cannot be installed here (needs root and apt); the Modelfile template test will fail"

# Installing torch==2.13.0 first, by itself, makes pip take the CPU build these machines carry instead of
# resolving a multi-GB CUDA build as a dependency of something else.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/tunelab demo

test: setup
	$(BIN)/python -m pytest -q -rs

clean:
	rm -rf runs .pytest_cache
