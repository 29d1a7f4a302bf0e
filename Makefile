# Two commands do all the set-up on a fresh machine:
#   make run    embedded mode: SQLite, in-memory layer, simulator feed, http://127.0.0.1:8000
#   make test   the whole suite against real Redis, PostgreSQL, Chromium and nginx
#               (installs the Debian packages it needs: scripts/system_packages.py)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint bench soak venv dev-venv lock packages clean

PIP := $(PY) -m pip install --quiet --disable-pip-version-check

# Both installs come from hash-pinned locks (make lock): the runtime lock for
# `make run`, the whole test environment (runtime + dev) for `make test`.
$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --require-hashes -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --require-hashes -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

venv: $(VENV)/.runtime

dev-venv: $(VENV)/.dev

# The Debian packages the suite needs (make test runs this itself).
packages:
	$(PYTHON) scripts/system_packages.py

# After editing requirements.in or requirements-dev.in: rewrite both locks.
# Pins already in a lock stay unless an edit needs them to move; UPGRADE=1 takes the newest.
LOCK := $(VENV)/bin/uv pip compile --quiet --universal --generate-hashes --python-version 3.11 $(if $(UPGRADE),--upgrade)
lock: dev-venv
	$(LOCK) requirements.in -o requirements.txt
	$(LOCK) requirements-dev.in -o requirements-dev.txt

run: venv
	DEBUG=$${DEBUG:-true} $(PY) manage.py migrate --no-input -v 0
	DEBUG=$${DEBUG:-true} $(PY) manage.py bootstrap --url http://$(HOST):$(PORT)
	DEBUG=$${DEBUG:-true} $(PY) manage.py runserver $(HOST):$(PORT)

# Uses REDIS_URL / DATABASE_URL when set; otherwise starts throwaway servers.
# Test processes in parallel (pytest-xdist), each with its own Redis and test database.
TEST_WORKERS ?= 2
test: export TEST_WORKERS := $(TEST_WORKERS)
test: export DEBUG = false
test: export SECRET_KEY ?= test-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz
test: dev-venv packages
	$(PY) manage.py collectstatic --no-input -v 0
	$(PY) scripts/with_services.py -- $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: dev-venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# WebSocket fan-out benchmark (~10 min; writes bench/RESULTS.md and bench/raw/). BENCH_ARGS=--quick for a smoke run.
bench: dev-venv
	SKIP_BROWSER_INSTALL=1 $(PY) scripts/with_services.py -- $(PY) bench/run.py $(BENCH_ARGS)

# Soak: 2,000 clients with churn, a Redis and a daphne restart (10 min; SOAK_SECONDS to shorten); writes bench/SOAK.md.
soak: dev-venv
	SKIP_BROWSER_INSTALL=1 $(PY) scripts/with_services.py -- $(PY) bench/soak.py

clean:
	rm -rf $(VENV) var staticfiles
