#!/bin/bash
# Container entrypoint: fetch the model where MODEL_SOURCE asks for it (mlflow registry or DVC
# remote; `baked` needs nothing), export what the fetch resolved, then exec the command (the
# server by default) so that it is PID 1 and receives SIGTERM directly.
# A failed fetch does not stop the container: the server starts not-ready and /ready, the
# HEALTHCHECK and the log give the reason (MODEL_FETCH_ERROR).
set -euo pipefail

source="${MODEL_SOURCE:-baked}"
if [ "$source" != baked ] && [ "${1:-}" = python ]; then
  out="${TMPDIR:-/tmp}/conveyor-fetch.env"
  echo "entrypoint: fetching the model (MODEL_SOURCE=$source)" >&2
  python -m serving.fetch "$out"
  while IFS= read -r line; do
    case "$line" in
      MODEL_DIR=* | MODEL_VERSION=* | MODEL_NAME=* | MODEL_FETCH_ERROR=*) export "${line?}" ;;
    esac
  done < "$out"
fi
exec "$@"
