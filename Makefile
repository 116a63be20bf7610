# minirdu: two commands do everything — `make sim` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HF_STAMP := $(VENV)/.installed-hf
JOBS   ?= 2

.PHONY: sim test test-fast bench-hbm bench clean venv

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

# op vs layer vs looped decode, sweeps, simulator speed, plots -> sim_results/bench/ (~15 min,
# half of it the Verilator builds of the 1- and 4-channel chips;
# `make bench BENCH_ARGS=--quick` for the 5-minute smoke run)
bench: $(STAMP)
	$(VENV)/bin/rdu bench $(BENCH_ARGS)

clean:
	rm -rf build sim_build sim_results/*

# Open the newest run's waves (`rdu sim --waves` writes DIR/waves.vcd and DIR/waves.gtkw) in
# GTKWave; without GTKWave, say how to install it and where the files are.
WAVES_DIR ?= sim_results
GTKWAVE   ?= gtkwave
.PHONY: waves
waves:
	@f=$$(ls -t $(WAVES_DIR)/*/waves.gtkw 2>/dev/null | head -n 1); \
	if [ -z "$$f" ]; then \
	  echo "no run with waves under $(WAVES_DIR)/: run one first, e.g." >&2; \
	  echo "  $(VENV)/bin/rdu sim --tokens 1 --waves" >&2; exit 1; fi; \
	d=$$(dirname "$$f"); \
	if command -v $(GTKWAVE) >/dev/null 2>&1; then \
	  echo "opening $$f"; exec $(GTKWAVE) "$$d/waves.vcd" "$$f"; \
	else \
	  echo "GTKWave is not installed. Install it with:"; \
	  echo "  sudo apt-get install gtkwave      (Debian/Ubuntu; macOS: brew install --cask gtkwave)"; \
	  echo "then run 'make waves' again, or: gtkwave $$d/waves.vcd $$f"; \
	  echo "waves of the newest run: $$d/waves.vcd"; \
	  echo "GTKWave save file:       $$f"; \
	fi
