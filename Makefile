# Every target installs what it needs into .venv (idempotent: a stamp file records the install).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed-test
DOC_STAMP := $(VENV)/.installed-doc
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: test test-all demo docs bench lint clean peers

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The CPU torch goes in first: an unpinned torch would pull several GB of CUDA packages.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[test]" -c constraints.txt
	touch $@

$(DOC_STAMP): $(STAMP)
	$(PIP) install -q -e ".[test,doc]" -c constraints.txt
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -e ".[test,bench]" -c constraints.txt
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

demo: $(STAMP)
	$(VENV)/bin/mumatch demo --out demo_out

docs: $(DOC_STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

# Benchmark-only peers (matchclot, scglue, POT, geomloss, ott-jax, ...) in .venv-peers, never in .venv.
peers:
	bash benchmarks/peers/setup_peers.sh

bench: $(BENCH_STAMP)
	$(PY) benchmarks/bench_simulate.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts tutorials
	$(VENV)/bin/ruff format --check src tests benchmarks scripts tutorials

clean:
	rm -rf $(VENV) docs/_build demo_out
