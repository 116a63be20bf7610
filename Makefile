# minirdu: two commands do everything — `make sim` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HF_STAMP := $(VENV)/.installed-hf
JOBS   ?= 2

.PHONY: sim test test-fast bench-hbm clean venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	touch $(STAMP)

# The test-only extra: torch (the machine's local CPU wheel) + transformers, so the float
# reference is checked against Hugging Face's LlamaForCausalLM. Optional: if it cannot be
# installed, those tests skip with a visible reason and everything else still runs.
$(HF_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[hf]" \
	  || echo "note: the optional [hf] extra did not install; Hugging Face comparison tests will skip"
	touch $(HF_STAMP)

venv: $(STAMP)

sim: $(STAMP)
	$(VENV)/bin/rdu sim

test: $(HF_STAMP)
	$(PY) -m pytest -n $(JOBS) -q -ra --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q -ra -m "not verilator"

bench-hbm: $(STAMP)
	$(VENV)/bin/rdu bench-hbm

clean:
	rm -rf build sim_build sim_results/*
