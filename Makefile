# Two set-up commands for a fresh machine: `make demo` and `make test`.
# Each creates (or reuses) .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-console test lint bench-core bench-rules bench-sync bench-services bench-console clean venv

$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/exnode demo

demo-console: $(STAMP)
	$(BIN)/exnode demo --keep-running

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench-core: $(STAMP)
	$(BIN)/python bench/bench_core.py

bench-rules: $(STAMP)
	$(BIN)/python bench/bench_rules.py

bench-sync: $(STAMP)
	$(BIN)/python bench/bench_sync.py

bench-services: $(STAMP)
	$(BIN)/python bench/bench_services.py

bench-console: $(STAMP)
	$(BIN)/python bench/bench_console.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
