# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench bench-cache bench-peers clean

# Each stamp records that the virtualenv holds the extras of one target for this pyproject.
$(VENV)/.demo-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[imageserver]'
	touch $@

$(VENV)/.test-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The benchmarks run the gateway as deployed: on uvloop.
$(VENV)/.bench-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,uvloop]'
	touch $@

## demo: install, start the reference ImageServer and the gateway, print the viewer URL
demo: $(VENV)/.demo-installed
	$(BIN)/tile-gateway demo

## test: install the test extras (and redis-server/chromium/node when missing), run every test
test: $(VENV)/.test-installed
	scripts/install-test-deps.sh
	$(BIN)/python -m pytest

## lint: ruff check and format check, and the import contracts of the house (pyproject.toml)
lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

## bench: wrk against a demo started for the run (needs wrk)
bench: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py

# BENCH_ARGS: more options of the script, e.g. BENCH_ARGS='--gateway-root ../before'.
## bench-cache: the cache benchmarks a-f against bare baselines (needs wrk and redis-server)
bench-cache: $(VENV)/.bench-installed
	$(BIN)/python bench/cache.py $(BENCH_ARGS)

## bench-peers: the gateway side by side with MapProxy 7 and nginx (needs wrk, redis-server, nginx)
bench-peers: $(VENV)/.bench-installed
	$(BIN)/python bench/peers.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) tests/browser/node_modules .pytest_cache .ruff_cache
