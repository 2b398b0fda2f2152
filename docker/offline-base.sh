#!/usr/bin/env bash
# Local stand-ins for the stack's registry images, for machines that reach Debian's archive but no image registry.
# For each image below that is neither present locally nor pullable, builds a stand-in under the same name:
#   python:3.11-slim-bookworm  Debian bookworm (debootstrap, minbase) with Debian's Python 3.11 (3.11.2) laid out
#                              as the official image has it: `python` and `pip` on PATH, pip not refused as
#                              "externally managed"; it trusts the CA certificates this host adds to its own
#                              (/usr/local/share/ca-certificates), as pip inside a build needs behind an
#                              intercepting proxy;
#   prom/prometheus:v3.5.0     Debian's prometheus package (2.42, not 3.5) on that base, with the official
#                              image's entrypoint, user, working folder, promtool and a wget for health checks.
# Grafana has no Debian package: no stand-in (the stack test leaves the grafana service out).
# Stand-ins carry the label org.leukolab.offline-stand-in; `docker rmi` them to use the real images once a
# registry is reachable. Where the real images can be pulled, this script only pulls them.
# Usage (as a user who may run docker): docker/offline-base.sh      (DEBIAN_MIRROR overrides the mirror)
set -euo pipefail

DOCKER=${DOCKER:-docker}
PYTHON_IMAGE=python:3.11-slim-bookworm
PROMETHEUS_IMAGE=$(sed -n 's/^ *image: *\(prom\/prometheus:[^ ]*\).*/\1/p' "$(dirname "$0")/docker-compose.yml")
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LABEL=org.leukolab.offline-stand-in

present_or_pulled() {  # present_or_pulled IMAGE: true when IMAGE is here or could be pulled
  "$DOCKER" image inspect "$1" >/dev/null 2>&1 && { echo "==> $1: present" >&2; return 0; }
  timeout 120 "$DOCKER" pull -q "$1" >/dev/null 2>&1 && { echo "==> $1: pulled" >&2; return 0; }
  echo "==> $1: not pullable here; building a stand-in from Debian packages" >&2
  return 1
}

python_stand_in() {
  command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
  local root
  root=$(mktemp -d /tmp/leukolab-rootfs.XXXXXX)
  trap 'rm -rf "$root"' RETURN
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$MIRROR" >&2
  cat > "$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
EOF
  # As in the official image: python and pip, no "externally managed" refusal.
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
  rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
  # This host's own CA additions, kept by every later update-ca-certificates (apt's ca-certificates-java too);
  # pip uses its own bundle unless told to use the system's.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >&2
  fi
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*
  tar -C "$root" -c . | "$DOCKER" import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'ENV LANG=C.UTF-8' \
    -c "LABEL $LABEL=debootstrap-bookworm-python3.11" -c 'CMD ["python3"]' - "$PYTHON_IMAGE" >&2
}

prometheus_stand_in() {
  "$DOCKER" build -q -t "$PROMETHEUS_IMAGE" - >&2 <<EOF
FROM $PYTHON_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends prometheus wget && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown nobody:nogroup /prometheus
LABEL $LABEL=debian-prometheus-package
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
}

present_or_pulled "$PYTHON_IMAGE" || python_stand_in
present_or_pulled "$PROMETHEUS_IMAGE" || prometheus_stand_in
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' "$PYTHON_IMAGE"
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' "$PROMETHEUS_IMAGE"
