# `make demo` and `make test` install what is missing, then run. Everything lives in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
PYTEST_ARGS ?=

.PHONY: install engines slurm browser demo demo-silicon test lint clean

install: $(STAMP)

# torch first and pinned: anything but the cached CPU wheel pulls GBs of CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# CP2K and Quantum ESPRESSO are programs, not Python packages: Debian's packages where we may
# install them, else a clear message (on a cluster, set HIFIDATA_CP2K_COMMAND / HIFIDATA_PW_COMMAND).
engines:
	@if command -v cp2k >/dev/null && command -v pw.x >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cp2k quantum-espresso libopenblas0-openmp >/dev/null; \
	else echo "make: CP2K and Quantum ESPRESSO are missing: sudo apt-get install cp2k quantum-espresso (docs/install.md)"; exit 1; fi

# the cluster tests start a single-node Slurm of their own (tests/slurm.py), as root
slurm:
	@if command -v slurmctld >/dev/null && command -v munged >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; \
	else echo "make: Slurm is missing: sudo apt-get install slurm-wlm munge (docs/install.md)"; exit 1; fi

demo: $(STAMP)
	test -f $(DEMO_DIR)/water-dimer.yaml || $(BIN)/hifidata init $(DEMO_DIR) --example water-dimer
	$(BIN)/hifidata run $(DEMO_DIR)/water-dimer.yaml

demo-silicon: $(STAMP) engines
	test -f $(DEMO_DIR)/silicon.yaml || $(BIN)/hifidata init $(DEMO_DIR) --example silicon
	$(BIN)/hifidata run $(DEMO_DIR)/silicon.yaml

# the dashboard's browser tests drive Debian's Chromium through its chromedriver
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	else echo "make: Chromium is missing: sudo apt-get install chromium chromium-driver (docs/install.md)"; exit 1; fi

test: $(STAMP) engines slurm browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check hifidata tests benchmarks

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
