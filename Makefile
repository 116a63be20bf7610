# minirdu: two commands do everything — `make sim` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JOBS   ?= 2

.PHONY: sim test test-fast bench-hbm clean venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(STAMP)

venv: $(STAMP)

sim: $(STAMP)
	$(VENV)/bin/rdu sim

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q -ra -m "not verilator"

bench-hbm: $(STAMP)
	$(VENV)/bin/rdu bench-hbm

clean:
	rm -rf build sim_build sim_results/*
