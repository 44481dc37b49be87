# bitsweep: the two commands of the README, each doing its own set-up.
#   make demo   set up .venv and run the main job (DEMO_ARGS="train.steps=20 ..." shortens it)
#   make test   set up .venv (with the dev and notebooks extras: JupyterLab) and run lint + tests
# The commands live in .venv/bin: run them as .venv/bin/bitsweep, or `source .venv/bin/activate`.
# Installs are constrained by constraints.txt (torch==2.13.0, the provided CPU wheel).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU torch wheel lives here on the project's machines; pip also reads it from pip.conf.
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),)
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check $(FIND_LINKS) -c constraints.txt
PYTEST_ARGS ?=
# Two test processes (one test file each at a time): the sweeps in the slow tests wait on
# process starts and I/O about half the time, so two share the 2 cores of the project's machines.
TEST_WORKERS ?= 2
DEMO_ARGS ?=

.PHONY: setup setup-dev demo test lint bench results clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP_INSTALL) -e .
	touch $@

# JupyterLab (the notebooks extra) pulls rfc3987-syntax through jsonschema[format-nongpl]; Ray
# imports jsonschema in every process, and that package builds a grammar at import (16 s per Ray
# process on a busy 2-core machine: raylets timed out waiting for their agents). Jupyter runs
# without it, so it is removed again.
$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints.txt
	$(PIP_INSTALL) -e ".[dev,notebooks]"
	$(BIN)/python -m pip uninstall --yes --quiet rfc3987-syntax
	touch $(VENV)/.installed $@

setup: $(VENV)/.installed

setup-dev: $(VENV)/.installed-dev

demo: setup
	$(BIN)/bitsweep run demo $(DEMO_ARGS)

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup-dev lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Benchmarks are not tests: each prints ratios against a baseline of the same run and writes
# benchmarks/results/*.json; BENCHMARKS.md is regenerated from them.
BENCHES := bench_quant_layers bench_orchestration bench_search bench_packing bench_ddp_scaling bench_deployed bench_bit_lm bench_tracking_load bench_sweep_load
bench: setup-dev
	for b in $(BENCHES); do $(BIN)/python -m benchmarks.$$b || exit 1; done
	$(BIN)/python -m benchmarks.report

# RESULTS.md and results/figures/ regenerated from the MLflow store the studies write (results/store,
# ignored by git); RESULTS_SCALE=results/scale-ci.yaml is the tiny run the tests make.
RESULTS_SCALE ?= results/scale.yaml
RESULTS_OUT ?= RESULTS.md
RESULTS_FIGURES ?= results/figures
RESULTS_STORE ?= results/store
RESULTS_ARGS ?=
results: setup-dev
	$(BIN)/python -m orchestrator.publish --scale $(RESULTS_SCALE) --out $(RESULTS_OUT) \
		--figures $(RESULTS_FIGURES) --store $(RESULTS_STORE) $(RESULTS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
