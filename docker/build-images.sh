#!/usr/bin/env bash
# Builds the stack's two images (leukolab-workspace, leukolab-api) with BuildKit, the engine's built-in Dockerfile
# frontend: first the base images (pulled, or Debian stand-ins where no registry answers: docker/offline-base.sh).
# pip's downloads stay in BuildKit's cache mount and unchanged layers in its build cache, so a second build on the
# same machine is quick. Prints each build's seconds and each image's size.
# Usage: docker/build-images.sh [TAG]   (default latest; extra `docker build` options in $BUILD_OPTIONS)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-latest}

# A client that builds with BuildKit: one with buildx, or one with BuildKit built in (Docker 20.10's CLI; later
# CLIs refuse DOCKER_BUILDKIT=1 without buildx).
DOCKER=
for candidate in docker /usr/bin/docker; do
  command -v "$candidate" >/dev/null || continue
  version=$("$candidate" version --format '{{.Client.Version}}' 2>/dev/null || true)
  if "$candidate" buildx version >/dev/null 2>&1 || [ "${version%%.*}" -lt 23 ] 2>/dev/null; then
    DOCKER=$candidate; break
  fi
done
[ -n "$DOCKER" ] || { echo "no docker client that builds with BuildKit (install buildx)" >&2; exit 1; }
export DOCKER DOCKER_BUILDKIT=1

DOCKER=$DOCKER bash docker/offline-base.sh
for image in workspace api; do
  start=$(date +%s)
  # shellcheck disable=SC2086  # BUILD_OPTIONS is a list of options
  "$DOCKER" build --progress=plain ${BUILD_OPTIONS:-} -f "docker/$image.Dockerfile" -t "leukolab-$image:$tag" .
  echo "==> leukolab-$image:$tag built in $(( $(date +%s) - start )) s"
done
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^leukolab-(workspace|api):$tag "
"$DOCKER" system df
