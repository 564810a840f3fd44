# Orchard: `make run` to try it, `make test` to check it. See README.md.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
HOST ?= 127.0.0.1
# The suite's second pass runs on these real services (CI starts them; see .ci/run).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/orchard
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15
PYTEST := $(BIN)/python -m pytest

.PHONY: setup run demo migrate demo-users worker web test test-unit test-services lint bench stress clean

# Idempotent: reinstalls only when a requirements file changed.
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

migrate: setup
	$(BIN)/python manage.py migrate --noinput

demo-users: migrate
	$(BIN)/python manage.py orchard_demo_users

# Web server and one worker together on the embedded defaults; Ctrl-C stops both.
run: demo-users
	@echo "Orchard on http://$(HOST):$(PORT)/  (Ctrl-C stops the web server and the worker)"
	HOST=$(HOST) PORT=$(PORT) PATH="$(abspath $(BIN)):$$PATH" $(BIN)/honcho start -f Procfile

# `make run` plus the whole pipeline (corpus, tokenizer, pretraining, SFT, reward model, PPO,
# GRPO, evaluation) launched as runs you can watch in the UI; it ends with the chat URL of the
# final checkpoint, and the web server and worker keep running. DATA=folder takes files laid out
# like shared/data (see its SOURCES.md) instead of generated data; QUICK=1 runs tiny sizes.
demo: demo-users
	@echo "Orchard demo on http://$(HOST):$(PORT)/  (Ctrl-C stops the web server, worker and demo)"
	HOST=$(HOST) PORT=$(PORT) PATH="$(abspath $(BIN)):$$PATH" PYTHONUNBUFFERED=1 \
		DEMO_ARGS="--base-url http://$(HOST):$(PORT)$(if $(DATA), --data $(abspath $(DATA)))$(if $(QUICK), --quick)" \
		$(BIN)/honcho start -f demo/Procfile

web: migrate
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

worker: migrate
	$(BIN)/python manage.py runworker

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python manage.py makemigrations --check --dry-run

# The whole suite on the embedded defaults (SQLite + filesystem broker), then the parts that
# touch the database and the broker again on PostgreSQL + Redis.
test: lint test-unit test-services

test-unit: setup
	$(PYTEST) -q

test-services: setup
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) \
		$(PYTEST) -q tests/training tests/labeling tests/integration tests/test_healthz.py \
		--ignore tests/integration/test_demo.py  # the demo chain runs once, on the defaults

# Speed as ratios against references measured in the same run (see training/core/bench/).
bench: setup
	$(BIN)/python -m training.core.bench pretrain
	$(BIN)/python -m training.core.bench generate
	$(BIN)/python -m training.core.bench webdata
	$(BIN)/python -m training.core.bench rl

# Fault trials at full size, TRIALS of each (CI runs a small form): kill -9 the worker at random
# points of countdown, tokenizer, pretraining and SFT runs and in the middle of checkpoint writes,
# on both database/broker pairs; then FLUSHALL and kill -9 of Redis under a worker.
stress: setup
	ORCHARD_KILL_TRIALS=$${TRIALS:-20} $(PYTEST) -q -m integration \
		tests/integration/test_worker_faults.py tests/integration/test_training_faults.py
	ORCHARD_KILL_TRIALS=$${TRIALS:-20} DATABASE_URL=$(TEST_DATABASE_URL) \
		CELERY_BROKER_URL=$(TEST_BROKER_URL) $(PYTEST) -q -m integration \
		tests/integration/test_worker_faults.py tests/integration/test_training_faults.py \
		tests/integration/test_redis_faults.py
	TEST_DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m stress.load --db postgres --labelers 50 --seconds 300
	$(BIN)/python -m stress.load --db sqlite --labelers 10 --seconds 120
	$(BIN)/python -m stress.schema --full --checks not_a_server_error,response_schema_conformance
	TEST_DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m stress.schema --db postgres --full \
		--checks not_a_server_error,response_schema_conformance

clean:
	rm -rf var .pytest_cache .ruff_cache
