# Two commands do all the set-up on a fresh machine:
#   make run    embedded mode: SQLite, in-memory layer, simulator feed, http://127.0.0.1:8000
#   make test   the whole suite against real Redis, PostgreSQL and Chromium
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint bench soak venv migrate clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

venv: $(VENV)/.installed

run: venv
	DEBUG=$${DEBUG:-true} $(PY) manage.py migrate --no-input -v 0
	DEBUG=$${DEBUG:-true} $(PY) manage.py bootstrap --url http://$(HOST):$(PORT)
	DEBUG=$${DEBUG:-true} $(PY) manage.py runserver $(HOST):$(PORT)

# Uses REDIS_URL / DATABASE_URL when set; otherwise starts throwaway servers.
test: export DEBUG = false
test: export SECRET_KEY ?= test-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz
test: venv
	$(PY) manage.py collectstatic --no-input -v 0
	$(PY) scripts/with_services.py -- $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# WebSocket fan-out benchmark (~10 min; writes bench/RESULTS.md and bench/raw/). BENCH_ARGS=--quick for a smoke run.
bench: venv
	SKIP_BROWSER_INSTALL=1 $(PY) scripts/with_services.py -- $(PY) bench/run.py $(BENCH_ARGS)

# Soak: 2,000 clients with churn, a Redis and a daphne restart (10 min; SOAK_SECONDS to shorten); writes bench/SOAK.md.
soak: venv
	SKIP_BROWSER_INSTALL=1 $(PY) scripts/with_services.py -- $(PY) bench/soak.py

clean:
	rm -rf $(VENV) var staticfiles
