#!/usr/bin/env bash
# `make up`: everything from a bare machine to a model answering, one progress line per phase
# with the seconds since the start (engine, base images, each image, stack health, first run).
# Each phase is its own idempotent script; on a machine that has them all it takes seconds.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

export CONVEYOR_UP_START=${CONVEYOR_UP_START:-$(date +%s)}
progress() { printf 'up: [%4ss] %s\n' "$(($(date +%s) - CONVEYOR_UP_START))" "$*" >&2; }

progress "python environment ready (.venv)"
bash scripts/ensure-docker.sh
progress "Docker engine answers"
bash scripts/base-images.sh
progress "base images ready"
# With CONVEYOR_UP_START set, build-images.sh prints one progress line per image and keeps each
# build's output in .build/logs/ (shown when a build fails).
bash scripts/build-images.sh --stack
progress "images ready"
bash scripts/stack.sh up
progress "done"
