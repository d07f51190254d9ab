# Two commands matter: `make run` and `make test`. Both set up everything they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8787
UI_PORT ?= 3000
DATA_DIR ?= .local_service
# The demo's Dagster instance: runs, event log, the local provider's batches, Parquet results.
DEMO_HOME ?= .dagster_home
CHROMIUM := /usr/bin/chromium
# Debian's PostgreSQL server binaries (initdb, postgres): one folder per major version, not on PATH.
POSTGRES_INITDB := $(wildcard /usr/lib/postgresql/*/bin/initdb)
# System packages are installed directly as root, through sudo otherwise.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup run serve smoke reliability browser postgres test test-fast bench bench-scale clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP) postgres

# The Dagster UI with the demo pipeline on http://$(HOST):$(UI_PORT); see README "The demo".
# Started inside DAGSTER_HOME, which holds a copy of dagster.yaml (Dagster reads it from there only).
# Under demo/supervise.py, which stops dagster dev's webserver, daemon and code servers with it on
# Ctrl-C or a SIGTERM (also one sent to make alone).
run: setup
	mkdir -p $(DEMO_HOME)
	cp dagster.yaml $(DEMO_HOME)/dagster.yaml
	cd $(DEMO_HOME) && DAGSTER_HOME=$(abspath $(DEMO_HOME)) exec $(abspath $(BIN))/python -m batch_pipelines.demo.supervise \
		$(abspath $(BIN))/dagster dev -w $(CURDIR)/workspace.yaml -h $(HOST) -p $(UI_PORT)

# The local batch service alone, with realistic pacing; see README "Try the local service".
serve: setup
	BATCH_PIPELINES_LOCAL_API_KEY=local-dev-key $(BIN)/batch-pipelines serve --host $(HOST) --port $(PORT) \
		--data-dir $(DATA_DIR) --profile moonshot --speed realistic

# The demo end to end without the UI, on a temporary instance; fails if a row is unaccounted for.
smoke: setup
	$(BIN)/python -m batch_pipelines.demo.smoke

# The pipeline end to end under every fault of the reliability suite (also part of `make test`), on the
# OpenAI, the Anthropic and the Gemini profile: one table row per fault, then one line per profile,
# `reliability <profile>: faults=N rows_lost=0 duplicate_submissions=0 wrong_answers=0`, and the total.
reliability: setup
	$(BIN)/python -m batch_pipelines_tests.reliability

# Debian's chromium for the browser test (the test never downloads a browser).
browser:
	@test -x $(CHROMIUM) || ($(SUDO) apt-get update && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# Debian's PostgreSQL server for the tests' throwaway servers (each on a free port of 127.0.0.1, in
# a temporary folder); nothing uses the cluster the package may start.
postgres:
	@test -n "$(POSTGRES_INITDB)" || ($(SUDO) apt-get update && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql)

# Tests in one process per core (pytest-xdist): most of a test's time is one Python thread (a
# Dagster run, the local service beside it), so two cores take two at a time.
test: setup browser
	$(BIN)/python -m pytest -q -n auto --dist worksteal

# The inner loop (a few minutes): every layer's tests, without the end-to-end suites (reliability
# scenarios, the browser, the demo and the README's examples), which `make test` runs too.
test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -n auto --dist worksteal --ignore=batch_pipelines_tests/reliability \
		--ignore=batch_pipelines_tests/ui --ignore=batch_pipelines_tests/demo --ignore=batch_pipelines_tests/test_readme.py

bench: setup
	$(BIN)/python benchmarks/bench_service.py
	$(BIN)/python benchmarks/bench_service_upload.py
	$(BIN)/python benchmarks/bench_requests.py
	$(BIN)/python benchmarks/bench_results.py
	$(BIN)/python benchmarks/bench_sensor.py
	$(BIN)/python benchmarks/bench_reuse.py

# A backfill of 1,000,000 rows over 100 days on PostgreSQL, S3 (moto) and dagster-daemon (about 15 min).
bench-scale: setup
	$(BIN)/python benchmarks/bench_scale.py

clean:
	rm -rf $(VENV) $(DATA_DIR) $(DEMO_HOME) .artifacts .pytest_cache
