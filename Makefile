# Two entry points: `make demo` and `make test`. Both create .venv and install the project first.
# torch==2.13.0 is installed on its own first: on this CPU-only machine pip takes the CPU wheel on disk;
# on a Linux GPU machine the same line takes PyPI's CUDA build. A bare `torch` would pull a multi-GB CUDA build here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/spark3r demo --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check spark3r_stream nodes tests benchmarks
	$(BIN)/python -m pytest -m "not slow" -q

lint: $(STAMP)
	$(BIN)/ruff check spark3r_stream nodes tests benchmarks
	$(BIN)/ruff format --check spark3r_stream nodes tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache runs
