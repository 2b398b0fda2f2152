#!/usr/bin/env bash
# A Docker engine for `make test-stack`: uses the one that answers; else, as root with apt-get, installs Debian's
# docker.io (Docker 20.10) and debootstrap (for docker/offline-base.sh) and starts dockerd in the background,
# its log in $LEUKOLAB_DOCKERD_LOG (default /var/log/leukolab-dockerd.log), its process id in
# /run/leukolab-dockerd.pid (`docker/engine.sh stop` stops the dockerd this script started, and only that).
# Exit status 3, with the reason on stderr: no engine, and none can be installed or started here.
set -euo pipefail

PID_FILE=/run/leukolab-dockerd.pid
LOG=${LEUKOLAB_DOCKERD_LOG:-/var/log/leukolab-dockerd.log}

cannot() { echo "no Docker engine: $*" >&2; exit 3; }

if [ "${1:-}" = stop ]; then
  [ -f "$PID_FILE" ] || exit 0
  pid=$(cat "$PID_FILE")
  kill "$pid" 2>/dev/null && timeout 60 tail --pid="$pid" -f /dev/null || true
  rm -f "$PID_FILE"
  echo "==> stopped dockerd $pid" >&2
  exit 0
fi

answers() { timeout 30 docker info >/dev/null 2>&1 || timeout 30 /usr/bin/docker info >/dev/null 2>&1; }
answers && { echo "==> a Docker engine answers" >&2; exit 0; }

[ "$(id -u)" -eq 0 ] || cannot "none answers, and starting one needs root (or add this user to the docker group)"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || cannot "no dockerd and no apt-get to install Debian's ${missing[*]}"
  echo "==> installing Debian's ${missing[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || cannot "apt-get could not install ${missing[*]}"
fi

echo "==> starting dockerd in the background (log: $LOG)" >&2
setsid dockerd >"$LOG" 2>&1 < /dev/null &
echo $! > "$PID_FILE"
for _ in $(seq 60); do
  answers && { echo "==> dockerd $(cat "$PID_FILE") answers" >&2; exit 0; }
  kill -0 "$(cat "$PID_FILE")" 2>/dev/null || break
  sleep 1
done
tail -20 "$LOG" >&2
kill "$(cat "$PID_FILE")" 2>/dev/null || true
rm -f "$PID_FILE"
cannot "dockerd did not start (log above)"
