# Conveyor: every set-up and test command a user or CI needs.
# `make up` brings the whole stack up; `make test` runs every test, Docker ones included.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
BIN         := $(VENV)/bin
UV_GROUPS   := --group dev --group pipelines --group serving --group serving-sklearn --group release
# uv lives in .build/tools (scripts/ensure-uv.sh installs it there); PATH is never relied on.
UV          := $(CURDIR)/.build/tools/bin/uv
export PATH := $(CURDIR)/$(BIN):$(PATH)
# uv trusts the host's CA store (a TLS-inspecting proxy's CA is there), like pip and curl do.
export UV_SYSTEM_CERTS ?= 1

.PHONY: help setup pipeline test test-dags test-fast test-stack test-e2e test-stack-down lint engine base-images images prune image-report bench bench-pipeline

help: ## list the commands
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup: $(VENV)/.synced ## create the host virtualenv from uv.lock
$(VENV)/.synced: pyproject.toml uv.lock
	@bash scripts/ensure-uv.sh >/dev/null
	$(UV) sync --frozen $(UV_GROUPS)
	@touch $@

pipeline: setup ## run the ML pipeline on this machine (dvc repro), no Docker needed
	dvc repro

lint: setup ## ruff (lint and format) over the code, hadolint over every Dockerfile
	ruff check .
	ruff format --check .
	hadolint $$(git ls-files '*Dockerfile*')

# Two pytest-xdist workers: the Compose stack's tests run in order on one (tests/conftest.py
# groups them), everything else on the other, each module whole. The 20 slowest tests close the
# report, so the suite's budget stays in sight.
PYTEST_PARALLEL := -n 2 --dist loadgroup --no-loadscope-reorder --durations=20
# One OpenMP thread per test process (the workers and the commands they start): two workers
# already fill the two cores, and a fit's OpenMP threads then wait for each other at every
# barrier (HistGradientBoosting: a third of its CPU time lost; see tests/pipelines/dvc_repo.py).
test test-fast: export OMP_NUM_THREADS ?= 1
test: setup engine images test-dags ## every test: unit, integration, slow, docker and e2e
	pytest $(PYTEST_PARALLEL)

# DAG integrity tests need apache-airflow (group `airflow`), kept out of the host venv: their own
# venv under .build/ (the host venv skips tests/dags with that reason).
AIRFLOW_VENV := .build/venv-airflow
test-dags: ## DAG integrity tests (tests/dags) in a venv with the airflow group
	@bash scripts/ensure-uv.sh >/dev/null
	UV_PROJECT_ENVIRONMENT=$(AIRFLOW_VENV) $(UV) sync --frozen --no-default-groups --group airflow --group dev --group release
	CONVEYOR_REQUIRE_AIRFLOW=1 $(AIRFLOW_VENV)/bin/pytest -p no:cacheprovider -W ignore::DeprecationWarning tests/dags

test-fast: setup ## the tests that need no Docker engine, less those marked slow (dvc repro runs, fuzzing)
	pytest -m "not docker and not e2e and not slow" $(PYTEST_PARALLEL)

# The inner loop of the e2e tests: the suite's stack (.build/conveyor-test.env) brought up once
# and left running; `make test-e2e E2E=tests/e2e/test_faults.py` runs that module (or any
# pytest selection) against it as it is, without rebuilding images or restarting the stack.
test-stack: setup engine images ## start the suite's own stack and leave it running
	python -m tests.helpers.stack up

test-e2e: setup ## run E2E=<tests> against the running test stack (make test-stack)
	@[ -n "$(E2E)" ] || { echo "make test-e2e: say which tests, e.g. E2E=tests/e2e/test_faults.py" >&2; exit 2; }
	CONVEYOR_TEST_STACK_REUSE=1 pytest $(E2E)

test-stack-down: setup ## remove the suite's own stack and its data
	python -m tests.helpers.stack down

engine: ## make sure a Docker engine runs (installs Debian's docker.io as root if none)
	@bash scripts/ensure-docker.sh

base-images: engine ## pull the base images, or build local stand-ins where no registry answers
	@bash scripts/base-images.sh

images: setup base-images ## build every project image
	@bash scripts/build-images.sh

prune: ## remove what earlier builds left (older image tags, BuildKit cache over 10GB)
	@bash scripts/prune-images.sh

image-report: ## size, layers, user, healthcheck and labels of every project image
	@$(BIN)/python scripts/image_report.py

# ---- the Compose stack (airflow/docker-compose.yaml, scripts/stack.sh) ----
.PHONY: up down clean logs ps retrain
up: setup ## engine, images, the stack (Airflow, MLflow, S3, serving) healthy, then the first retrain run
	@bash scripts/up.sh

down: ## stop the stack, keep its data (volumes)
	@bash scripts/stack.sh down

clean: ## stop the stack and delete its data (volumes)
	@bash scripts/stack.sh clean

logs: ## follow the stack's logs (SERVICE=name for one)
	@bash scripts/stack.sh logs $(SERVICE)

ps: ## the stack's services and their health
	@bash scripts/stack.sh ps

retrain: ## trigger the retrain DAG for DATE=YYYY-MM-DD (default today) and wait for its end
	@$(BIN)/python scripts/airflow_api.py trigger retrain $(if $(DATE),--date $(DATE)) --conf '$(or $(CONF),{})' --wait $(or $(WAIT),3600)

bench: setup ## serving benchmark: Conveyor vs `mlflow models serve` on every model family (needs wrk)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	python benchmarks/serving/bench.py

bench-pipeline: setup ## the daily run's cost at 1-1000 days of history, with and without train.window
	python benchmarks/pipeline/bench.py $(ARGS)

# ---- Swarm across engine nodes on this machine (scripts/swarm.sh, release/swarm/stack.yaml) ----
# Settings from the environment or .env (SWARM_*, SERVING_REPLICAS/CPUS/MEMORY_MB; see
# release/README.md); SWARM_SERVING_IMAGE is the baked serving image it serves first.
.PHONY: swarm-up swarm-down
swarm-up: engine base-images ## a multi-node Swarm in containers serving SWARM_SERVING_IMAGE
	@bash scripts/swarm.sh up

swarm-down: ## remove the local Swarm: its nodes, registry, proxy, volumes and network
	@bash scripts/swarm.sh down
