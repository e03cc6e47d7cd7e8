# make demo — set up .venv if needed, then run the main job on the embedded default model.
# make test — set up .venv if needed, then run the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

setup: $(STAMP)

# Installing torch==2.13.0 first, by itself, makes pip take the CPU build these machines carry instead of
# resolving a multi-GB CUDA build as a dependency of something else.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/tunelab demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .pytest_cache
