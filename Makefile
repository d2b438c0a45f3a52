# dynroute: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup demo test test-slow lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/dynroute demo

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q --doctest-modules src tests --durations=10

# The tests marked slow (~4 min on 2 cores): multi-process training, CLI runs of every router.
test-slow: setup
	$(BIN)/python -m pytest -q -m slow tests --durations=10

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Measures this machine into runs/bench/ (the committed benchmarks/results/ stay the reference).
bench: setup
	$(BIN)/python benchmarks/layer.py --results runs/bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build src/*.egg-info
