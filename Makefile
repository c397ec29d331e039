# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where `make demo` listens: `make demo PORT=8090 IMAGESERVER_PORT=8091 HOST=0.0.0.0`. Plain `=`
# so that only the command line changes them, never an unrelated PORT or HOST in the environment.
HOST = 127.0.0.1
PORT = 8080
IMAGESERVER_PORT = 8081
# The demo ImageServer's raster store: GeoTIFFs dropped there are CreateImageCollection inputs.
RASTER_STORE = raster-store

.PHONY: demo test lint bench bench-cache bench-peers clean

# Each stamp records that the virtualenv holds the extras of one target for this pyproject.
# pip shows what it installs; each step says what it is about to do.
$(VENV)/.demo-installed: pyproject.toml
	@test -x $(BIN)/python || { echo "Creating the virtualenv $(VENV) with $(PYTHON) ..."; $(PYTHON) -m venv $(VENV); }
	@echo "Installing tile-gateway with the [imageserver] extra into $(VENV) ..."
	@$(BIN)/python -m pip install -e '.[imageserver]'
	@touch $@

$(VENV)/.test-installed: pyproject.toml
	@test -x $(BIN)/python || { echo "Creating the virtualenv $(VENV) with $(PYTHON) ..."; $(PYTHON) -m venv $(VENV); }
	@echo "Installing tile-gateway with the [test] extra into $(VENV) ..."
	@$(BIN)/python -m pip install -e '.[test]'
	@touch $@

# The benchmarks run the gateway as deployed: on uvloop.
$(VENV)/.bench-installed: pyproject.toml
	@test -x $(BIN)/python || { echo "Creating the virtualenv $(VENV) with $(PYTHON) ..."; $(PYTHON) -m venv $(VENV); }
	@echo "Installing tile-gateway with the [test,uvloop] extras into $(VENV) ..."
	@$(BIN)/python -m pip install -e '.[test,uvloop]'
	@touch $@

## demo: install, start the reference ImageServer and the gateway, print the viewer URL
##       (PORT=8080, IMAGESERVER_PORT=8081, HOST=127.0.0.1 and RASTER_STORE=raster-store unless given)
demo: $(VENV)/.demo-installed
	@echo "Starting the reference ImageServer on $(HOST):$(IMAGESERVER_PORT) and the gateway on $(HOST):$(PORT) ..."
	@$(BIN)/tile-gateway demo --host '$(HOST)' --port '$(PORT)' --imageserver-port '$(IMAGESERVER_PORT)' --raster-store '$(RASTER_STORE)'

## test: install the test extras (and redis-server/chromium/node when missing), run every test
test: $(VENV)/.test-installed
	@echo "Checking the programs the tests drive (scripts/install-test-deps.sh) ..."
	@scripts/install-test-deps.sh
	@echo "Running the tests (pytest) ..."
	@$(BIN)/python -m pytest

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
