VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo test slow lint bench sim ui clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv once and install flashpipe with its dev tools

demo: $(STAMP) ## run every demo job against the embedded simulator, print results and cost
	@bash scripts/demo.sh

# pytest exits 5 when it collects nothing: that is a failure here, never a silent pass
PYTEST = $(PY) -m pytest tests -m "$(1)"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make: pytest collected no tests - failing on purpose" >&2; exit 1; fi; \
	exit $$rc

test: $(STAMP) ## run the test suite (a few minutes; slow chaos tests and benchmarks excluded)
	@$(call PYTEST,not slow)

slow: $(STAMP) ## run the slow chaos and long end-to-end tests (CI runs them after `make test`)
	@$(call PYTEST,slow)

lint: $(STAMP) ## ruff format --check, ruff check, mypy --strict, the import layers (lint-imports)
	$(VENV)/bin/ruff format --check pipeline tests
	$(VENV)/bin/ruff check pipeline tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP) ## run the benchmarks, write tests/bench/results.md
	$(PY) -m tests.bench.run

sim: $(STAMP) ## serve the hostile simulator on :8765 until Ctrl-C
	$(VENV)/bin/flashpipe sim --port 8765 --profile hostile --rpm 600

ui: $(STAMP) ## serve the results page of the demo store on http://127.0.0.1:8642/
	$(VENV)/bin/flashpipe ui --db demo.duckdb --port 8642

clean: ## remove the venv, caches and demo stores
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo.duckdb* *.duckdb *.duckdb.wal *.duckdb.lock
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
