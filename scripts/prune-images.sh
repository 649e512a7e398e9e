#!/usr/bin/env bash
# Keep the engine's disk bounded (`make prune`; build-images.sh runs it after every build).
# Every rebuild leaves the image it replaced behind and BuildKit's cache grows with every build;
# a full disk then fails the stack and the tests in ways that look like anything but a full disk.
# Per project image (.build/images.env, or IMAGES_ENV) the current tag and the newest one before it stay (a
# stack from another clone or an earlier commit may still run on it); an image a container uses
# is never removed (`rmi` without force refuses). BuildKit's cache is cut to BUILD_CACHE_KEEP
# (10GB). Fails if the engine's disk still has under MIN_FREE_GIB (10) free.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

DOCKER="${DOCKER:-/usr/bin/docker}"
SOURCE_URL="${SOURCE_URL:-https://github.com/conveyor/conveyor}"
IMAGES_ENV="${IMAGES_ENV:-.build/images.env}"
say() { echo "prune-images: $*" >&2; }

if [ -s "$IMAGES_ENV" ]; then
  while IFS='=' read -r _ current; do
    [ -n "$current" ] || continue
    # Newest first, by the creation time to the nanosecond (`docker images` orders by the second).
    "$DOCKER" images "${current%:*}" --format '{{.Repository}}:{{.Tag}}' \
      | { grep -vxF "$current" || true; } | while read -r ref; do
        echo "$(date -d "$("$DOCKER" image inspect -f '{{.Created}}' "$ref")" +%s%N) $ref"
      done | sort -rn | tail -n +2 | while read -r _ stale; do
        "$DOCKER" rmi "$stale" >/dev/null 2>&1 && say "removed $stale" || true
      done
  done < "$IMAGES_ENV"
fi
# Untagged images this project built (a forced rebuild leaves the old one untagged).
"$DOCKER" image prune -f --filter "label=org.opencontainers.image.source=$SOURCE_URL" >/dev/null
if "$DOCKER" builder prune --help 2>/dev/null | grep -q -- '--keep-storage'; then
  "$DOCKER" builder prune -f --keep-storage "${BUILD_CACHE_KEEP:-10GB}" >/dev/null 2>&1 \
    || say "could not cut BuildKit's cache ('docker builder prune')"
fi

root=$("$DOCKER" info -f '{{.DockerRootDir}}')
free_gib=$(($(df -Pk "$root" | awk 'NR == 2 { print $4 }') / 1024 / 1024))
if [ "$free_gib" -lt "${MIN_FREE_GIB:-10}" ]; then
  say "only $free_gib GiB free under $root; the stack and the tests need ${MIN_FREE_GIB:-10} GiB (MIN_FREE_GIB)"
  say "see 'docker system df'; 'docker image prune -a' and 'docker builder prune' free what no container uses"
  exit 1
fi
