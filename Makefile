# hotpath developer commands. Every target creates .venv and installs the package
# (editable, with dev extras) when needed, so each works on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench install clean system-deps generate

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Optional extras from Debian (needs root and apt): HypoPG for PostgreSQL 15, which doctor's
# index advisor validates candidates with, PgBouncer, and Chromium (the demo report is
# rendered in it). CI installs them; without them the tests that need them skip, saying why.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  [ -f /usr/share/postgresql/15/extension/hypopg.control ] || missing="$$missing postgresql-15-hypopg"; \
	  command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing="$$missing pgbouncer"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "system-deps: not root or no apt-get; skipping HypoPG/PgBouncer"; fi

demo: $(STAMP)
	$(BIN)/hotpath demo

# Test processes (pytest-xdist): the tests mostly wait on servers, sleeps and subprocesses,
# so twice the CPUs pay. Each process starts its own servers (hotpath_stack is per session),
# so a test that kills or pauses one disturbs no other process's tests; --dist loadfile keeps
# a file's tests (and its module fixtures) in one process. TEST_WORKERS=0: one process.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(8, 2 * len(os.sched_getaffinity(0))))')

# Bytecode is cached for the run even where the environment says not to
# (PYTHONDONTWRITEBYTECODE): each test process and the hundreds of Python processes the tests
# start (hotpath run, the CLI, shop servers, spawned workers) would otherwise compile
# hotpath's sources, and pytest rewrite every test module's asserts, again each time.
test: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools
	$(BIN)/mypy
	$(BIN)/mypy --strict tools
	$(BIN)/python tools/async_to_sync.py --check

# The sync twins (cache/_sync.py, ...) are written from their async sources: edit those, then
# run this (docs/contributing.md). `make lint` fails while a generated file is stale.
generate: $(STAMP)
	$(BIN)/python tools/async_to_sync.py

bench: $(STAMP)
	$(BIN)/python -m bench all --quick

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
