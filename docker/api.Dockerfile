# The prediction API alone: `python -m leukolab.serving` as a non-root user, healthy once /ready answers 200.
# compose builds it from the repository root (context ..); by hand: DOCKER_BUILDKIT=1 docker build -f docker/api.Dockerfile .
# It installs the distributions in docker/requirements-api.txt (no Spark, Jupyter, Voila or test tools),
# each held to its requirements.txt pin.
# No `# syntax=` line: the engine's built-in Dockerfile frontend (Docker 20.10 and later) builds it, cache mounts
# included, with no frontend image to pull.
FROM python:3.11-slim-bookworm

# The first instructions, down to the torch install, are workspace.Dockerfile's, word for word: the two images share
# that layer (most of their size) on disk and in the build cache.
# requirements.txt's torch/torchvision versions from TORCH_INDEX_URL, or pip's default index when it is empty.
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
ENV LEUKOLAB_WORKSPACE=/home/leukolab

# pip refuses constraints with extras ("Constraints cannot have extras": requirements.txt pins tritonclient[http]):
# the constraints are requirements.txt's pins without their extras.
COPY docker/requirements-api.txt /tmp/
RUN --mount=type=cache,target=/root/.cache/pip \
    sed -E 's/\[[^]]*\]//' /tmp/requirements.txt > /tmp/constraints.txt \
 && pip install -r /tmp/requirements-api.txt -c /tmp/constraints.txt \
 && pip check

WORKDIR /opt/leukolab
COPY pyproject.toml README.md requirements.txt ./
COPY lib/ lib/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
 && groupadd --gid "$GID" leukolab \
 && useradd --uid "$UID" --gid "$GID" --create-home --shell /usr/sbin/nologin leukolab

USER leukolab
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
ENTRYPOINT ["python", "-m", "leukolab.serving"]
CMD ["--host", "0.0.0.0", "--port", "8000"]
