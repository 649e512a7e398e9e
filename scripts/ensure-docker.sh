#!/usr/bin/env bash
# Make sure a Docker engine answers. Where one runs already, do nothing. Otherwise, on a
# Debian/Ubuntu host and as root: install Debian's docker.io (+ debootstrap for the base-image
# stand-ins), start dockerd in the background (no systemd needed) and wait until it answers.
# Idempotent. Builds use Debian's client /usr/bin/docker (DOCKER overrides it).
set -euo pipefail

DOCKER="${DOCKER:-/usr/bin/docker}"
WAIT_SECONDS="${DOCKER_WAIT_SECONDS:-60}"
LOG=/var/log/dockerd.log

say() { echo "ensure-docker: $*" >&2; }
answers() { [ -x "$DOCKER" ] && timeout 10 "$DOCKER" info >/dev/null 2>&1; }

if answers; then
  # The base-image stand-ins need debootstrap: install it too where we can.
  if ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing debootstrap (for the base-image stand-ins)"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    else
      say "note: debootstrap missing (needed only for base-image stand-ins)"
    fi
  fi
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  say "no Docker engine answers and this is not root: start one, or run 'sudo make engine'"
  exit 1
fi

# Install Debian's engine (and debootstrap) if the client or the daemon is missing.
if [ ! -x "$DOCKER" ] || ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || { say "no engine and no apt-get: install Docker by hand"; exit 1; }
  say "installing docker.io and debootstrap from the Debian mirror"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io debootstrap ca-certificates >/dev/null
fi

# Daemon defaults: containers cannot gain privileges through setuid binaries.
if [ ! -e /etc/docker/daemon.json ] && [ "${DOCKER_NO_NEW_PRIVILEGES:-1}" = 1 ]; then
  mkdir -p /etc/docker
  printf '{\n  "no-new-privileges": true\n}\n' > /etc/docker/daemon.json
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  say "starting dockerd (log: $LOG)"
  # setsid + nohup: the daemon survives the calling shell (there is no systemd here).
  setsid nohup dockerd >>"$LOG" 2>&1 < /dev/null &
fi

for ((i = 0; i < WAIT_SECONDS; i++)); do
  if answers; then say "engine answers after ${i}s"; exit 0; fi
  sleep 1
done
say "dockerd did not answer within ${WAIT_SECONDS}s; last lines of $LOG:"
tail -n 20 "$LOG" >&2 || true
exit 1
