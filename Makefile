# aigc-pipeline: `make demo` and `make test` are the two commands a fresh clone needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Ray on loopback only (docs/architecture.md, "Ray on a small machine"): node IP 127.0.0.1 and every Ray socket bound to loopback.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
# Hard outer limit for the suite, so a hung Ray fails CI fast instead of eating its budget.
TEST_TIMEOUT ?= 2700

.PHONY: install demo test test-slow lint bench clean constraints

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt examples/aigc-family-example/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: 2.13.0 is the CPU wheel on this machine; a bare `torch` pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	# constraints.txt: the tested versions; without them pip's resolver gives up on a fresh machine (resolution-too-deep)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# the out-of-tree family example (registers `arch: tiny-gan` by entry point; tests use it)
	$(BIN)/python -m pip install -q --no-deps -e examples/aigc-family-example
	touch $@

demo: install
	$(BIN)/aigc run jobs/demo.yaml --verify --date $$(date +%F)
	$(BIN)/aigc report outputs/generated/demo/$$(date +%F)

test: install
	$(BIN)/ruff check .
	timeout -s TERM -k 30 $(TEST_TIMEOUT) $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

test-slow: install
	timeout -s TERM -k 30 3600 $(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python benchmarks/generate_throughput.py

constraints: install
	{ sed -n '1,/^# Refresh/p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(torch|aigc-pipeline|aigc-family-example)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info outputs
