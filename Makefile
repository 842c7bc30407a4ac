# `make demo` and `make test` install what is missing, then run. Everything lives in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
PYTEST_ARGS ?=

.PHONY: install demo test lint clean

install: $(STAMP)

# torch first and pinned: anything but the cached CPU wheel pulls GBs of CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: $(STAMP)
	test -f $(DEMO_DIR)/water-dimer.yaml || $(BIN)/hifidata init $(DEMO_DIR) --example water-dimer
	$(BIN)/hifidata run $(DEMO_DIR)/water-dimer.yaml

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check hifidata tests benchmarks

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
