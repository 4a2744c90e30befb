# Linkshop. `make run` (embedded, one process) and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-unit test-integration up down migrate bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)  ## all five services in one process on http://127.0.0.1:8080
	$(PY) -m services.embedded

test: $(STAMP)  ## unit tests, then integration against real PostgreSQL and RabbitMQ
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest -m "not integration"

test-integration: $(STAMP)
	$(PY) -m pytest -m integration

migrate: $(STAMP)  ## create each service's schema (real mode: set <SVC>_DATABASE_URL)
	$(PY) -m services.manage migrate

up: $(STAMP)  ## real mode on this machine: gunicorn + worker per service, local PostgreSQL + RabbitMQ
	$(PY) -m scripts.stack up

down: $(STAMP)
	$(PY) -m scripts.stack down

bench: $(STAMP)  ## not part of `make test`: each writes bench/results/<name>-<date>.json
	$(PY) -m bench.purchase
	$(PY) -m bench.ledger
	$(PY) -m bench.referral_graph
	$(PY) -m bench.risk_stream

clean:
	rm -rf var .pytest_cache
