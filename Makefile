# emotune: `make demo` and `make test` do all set-up on a fresh machine.
# VENV_FLAGS=--system-site-packages lets a GPU cluster's own torch show through into the venv.
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.emotune-installed
DEMO_OUT ?= demo_out
MLFLOW_PORT ?= 5000
MLFLOW_SERVER_PORT ?= 5001
MLFLOW_SERVER_DB ?= mlflow-server.db
MLFLOW_SERVER_ARTIFACTS ?= mlflow-server-artifacts

export RAY_USAGE_STATS_ENABLED ?= 0
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: install demo test lint mlflow-ui mlflow-server bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 (the CPU build) only where no torch is importable; a cluster's CUDA torch stays.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/emotune demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(PY) -m ruff check .

# Prints the UI's address and each experiment's runs-table link (also printed by `emotune sweep`/`emotune demo`).
mlflow-ui: $(STAMP)
	@$(PY) -m cluster.mlflow_ui --store mlflow.db --port $(MLFLOW_PORT) \
		|| echo "MLflow UI: http://127.0.0.1:$(MLFLOW_PORT) (the runs link is printed by emotune sweep/demo)"
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port $(MLFLOW_PORT) --backend-store-uri sqlite:///mlflow.db

# A team tracking server on one box: runs and metrics in SQLite, artifacts (checkpoints, tables, plots, models) in a
# local folder that the server itself serves, so clients upload them over HTTP and need no access to the folder.
# Loopback only: nodes on other machines reach it through an SSH tunnel, or use a server the team already runs.
# Sweeps log here with MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_SERVER_PORT).
mlflow-server: $(STAMP)
	$(VENV)/bin/mlflow server --host 127.0.0.1 --port $(MLFLOW_SERVER_PORT) \
		--backend-store-uri sqlite:///$(MLFLOW_SERVER_DB) \
		--serve-artifacts --artifacts-destination $(MLFLOW_SERVER_ARTIFACTS)

bench: $(STAMP)
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/sweep_overhead.py
	$(PY) benchmarks/data_path.py
	$(PY) benchmarks/center_loss.py
	$(PY) benchmarks/selective_mtl.py
	$(PY) benchmarks/dcgan.py
	$(PY) benchmarks/aae_mtl.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
