# The leukolab workspace: the library, JupyterLab, Voila, papermill, the MLflow server and Spark (Java 17).
# compose builds it from the repository root (context ..); by hand: DOCKER_BUILDKIT=1 docker build -f docker/workspace.Dockerfile .
# Used by the jupyter, mlflow, voila, spark-master and spark-worker services.
# No `# syntax=` line: the engine's built-in Dockerfile frontend (Docker 20.10 and later) builds it, cache mounts
# included, with no frontend image to pull.
FROM python:3.11-slim-bookworm

# The first instructions, down to the torch install, are api.Dockerfile's, word for word: the two images share
# that layer (most of their size) on disk and in the build cache.
# torch and torchvision at the versions requirements.txt pins, from the package index TORCH_INDEX_URL names, or
# pip's default index when it is empty (the CUDA build, about 5 GB). A CPU-only wheel index (no CUDA libraries,
# a fraction of the size): --build-arg TORCH_INDEX_URL=<that index's address> (see docs/docker.md).
ARG TORCH_INDEX_URL=
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
 && pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
      "$(grep -E '^torch==' /tmp/requirements.txt)" "$(grep -E '^torchvision==' /tmp/requirements.txt)"

ARG UID=1000
ARG GID=1000
# SPARK_HOME: the Spark inside the pyspark wheel, whose spark-class runs the compose stack's standalone master
# and worker, so they are the Spark version the driver is.
ENV SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python

# Java 17 for Spark, procps for Spark's scripts, git for the runs' git_commit tags.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps git \
 && rm -rf /var/lib/apt/lists/*

# Everything else from pip's default index at requirements.txt's pins; a CPU torch (2.x.y+cpu) satisfies
# requirements.txt's torch==2.x.y, so this install keeps it.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r /tmp/requirements.txt \
 && pip check

RUN groupadd --gid "$GID" leukolab \
 && useradd --uid "$UID" --gid "$GID" --create-home --shell /bin/bash leukolab \
 && mkdir -p /mlflow/db /mlflow/artifacts \
 && chown -R leukolab:leukolab /mlflow \
 && git config --system --add safe.directory /opt/leukolab

# The project at /opt/leukolab, installed editable: a checkout bind-mounted there (as compose does for
# jupyter and spark-worker) replaces it, code, notebooks and params alike.
WORKDIR /opt/leukolab
COPY --chown=leukolab:leukolab pyproject.toml README.md requirements.txt ./
COPY --chown=leukolab:leukolab lib/ lib/
COPY --chown=leukolab:leukolab notebooks/ notebooks/
COPY --chown=leukolab:leukolab params/ params/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps -e . \
 && python -m ipykernel install --sys-prefix --name leukolab --display-name "Python (leukolab)" \
 && chown -R leukolab:leukolab /opt/leukolab

USER leukolab
EXPOSE 8888 8866 5000 7077 8080 8081
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser"]
