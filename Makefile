# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo headless test lint bench bench-wan soak clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first and pinned, so nothing can pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fl-console data.toml

headless: $(STAMP)
	$(VENV)/bin/fl-console data.toml --headless --summary runs/summary.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench

# The network lab's full table: every codec x fanout over 20 Mbit/s links (root; ~15 min).
bench-wan: $(STAMP)
	$(PY) -m bench.wan_bench

# The chaos run: 300 rounds of six nodes under seeded faults, two console kills, floods; its
# checks and figures (docs/faults.md, "chaos run"). Exit 1 when a check fails (~10-20 min).
soak: $(STAMP)
	$(PY) -m bench chaos

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
