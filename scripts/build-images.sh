#!/usr/bin/env bash
# Build every project image (or the ones named: `scripts/build-images.sh train`; or, with
# --stack, those the Compose stack of `make up` runs: not the Swarm's nor Celery's) from the
# repository root as context, with BuildKit where the client has it, else the classic builder.
# With BuildKit, the images after the shared builder are built BUILD_JOBS (3) at a time: most of
# a build is waiting on downloads or on one core, and their uv caches are one BuildKit cache.
# Each image gets an immutable content tag (hash of its Dockerfile, the files it COPYs and the
# base images it is built on) and OCI labels; an image whose tag exists is not rebuilt
# (FORCE_BUILD=1 rebuilds). Base image names come from .build/base-images.env (make base-images).
# Builds trust what the host trusts: the host's CA bundle (or EXTRA_CA_CERTS=/path/bundle.pem;
# EXTRA_CA_CERTS=none: no extra CA) is copied to .build/ca/extra-ca.pem for the shared builder
# image (docker/builder), which every Python image uses as its builder stage only.
# Writes the resolved names to .build/images.env (TRAIN_IMAGE=..., SERVING_IMAGE=..., ...).
# Before and after, scripts/prune-images.sh removes what earlier builds left behind (PRUNE=0:
# not, for a caller whose containers may be using older tags: the test suite).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

DOCKER="${DOCKER:-/usr/bin/docker}"
# The uv every image installs (ARG UV_VERSION): uv's own pin in pyproject.toml.
UV_VERSION=$(sed -n 's/^required-version *= *"==\([0-9.]*\)"/\1/p' pyproject.toml)
SOURCE_URL="${SOURCE_URL:-https://github.com/conveyor/conveyor}"

# name | Dockerfile | env var in .build/images.env | who runs it   (context: the repository root)
# `builder` comes first: the others are built FROM it (BUILDER_IMAGE). "stack": the Compose
# stack of `make up` and its DAG's tasks; "swarm": scripts/swarm.sh; "celery":
# airflow/compose.celery.yaml.
IMAGES=(
  "builder|docker/builder/Dockerfile|BUILDER_IMAGE|stack"
  "train|pipelines/Dockerfile|TRAIN_IMAGE|stack"
  "serving|serving/Dockerfile|SERVING_IMAGE|stack"
  "serving-sklearn|serving/sklearn.Dockerfile|SERVING_SKLEARN_IMAGE|stack"
  "airflow|airflow/Dockerfile|AIRFLOW_IMAGE|stack"
  "mlflow|docker/mlflow/Dockerfile|MLFLOW_IMAGE|stack"
  "s3|docker/s3/Dockerfile|S3_IMAGE|stack"
  "socket-proxy|docker/socket-proxy/Dockerfile|SOCKET_PROXY_IMAGE|stack"
  "gateway|docker/gateway/Dockerfile|GATEWAY_IMAGE|stack"
  "release|release/Dockerfile|RELEASE_IMAGE|stack"
  "swarm-node|docker/swarm-node/Dockerfile|SWARM_NODE_IMAGE|swarm"
  "registry|docker/registry/Dockerfile|REGISTRY_IMAGE|swarm"
  "swarm-gateway|docker/swarm-gateway/Dockerfile|SWARM_GATEWAY_IMAGE|swarm"
  "redis|docker/redis/Dockerfile|REDIS_IMAGE|celery"
  "prometheus|docker/prometheus/Dockerfile|PROMETHEUS_IMAGE|stack"
  "alertmanager|docker/alertmanager/Dockerfile|ALERTMANAGER_IMAGE|stack"
  "exporters|docker/exporters/Dockerfile|EXPORTERS_IMAGE|stack"
)

say() { echo "build-images: $*" >&2; }
# Under `make up` (scripts/up.sh): a progress line per image, build output to .build/logs/.
progress() { [ -z "${CONVEYOR_UP_START:-}" ] || printf 'up: [%4ss] %s\n' "$(($(date +%s) - CONVEYOR_UP_START))" "$*" >&2; }

# BuildKit only where the client can drive it (Debian's 20.10 client can; a client without
# buildx or BuildKit support falls back to the classic builder).
if [ -z "${DOCKER_BUILDKIT:-}" ]; then
  if DOCKER_BUILDKIT=1 "$DOCKER" build --help 2>/dev/null | grep -q -- '--secret'; then
    export DOCKER_BUILDKIT=1
  else
    export DOCKER_BUILDKIT=0
  fi
fi

mkdir -p .build/ca
# One build at a time: concurrent runs would race on the engine's cores, on .build/ca/ and on
# images.env.
exec 9>.build/images.lock
flock -w 3600 9 || { say "another build-images.sh still holds .build/images.lock"; exit 1; }

# Room first: what earlier builds left goes, and a nearly full disk stops here, said plainly.
prune() { [ "${PRUNE:-1}" = 0 ] || bash scripts/prune-images.sh; }
prune
[ -s .build/base-images.env ] || bash scripts/base-images.sh
# shellcheck disable=SC1091
. .build/base-images.env

# Extra CA certificates, for the builder image only (never committed: .build/ is ignored).
# Unset: the host's own bundle, so that builds trust what the host trusts.
host_bundle() {
  local f
  for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
    [ -r "$f" ] && { echo "$f"; return; }
  done
}
extra_ca=${EXTRA_CA_CERTS:-$(host_bundle)}
mkdir -p .build/ca && touch .build/ca/.keep
if [ -n "$extra_ca" ] && [ "$extra_ca" != none ]; then
  [ -r "$extra_ca" ] || { say "EXTRA_CA_CERTS=$extra_ca is not a readable file"; exit 1; }
  cmp -s "$extra_ca" .build/ca/extra-ca.pem 2>/dev/null || cp "$extra_ca" .build/ca/extra-ca.pem
else
  rm -f .build/ca/extra-ca.pem
fi

# Source paths of the COPY/ADD instructions that read the build context (not --from=).
copy_sources() {
  awk 'toupper($1) == "COPY" || toupper($1) == "ADD" {
         from = 0; n = 0
         for (i = 2; i <= NF; i++) { if ($i ~ /^--from=/) from = 1; else if ($i !~ /^--/) a[++n] = $i }
         if (!from) for (i = 1; i < n; i++) print a[i]
       }' "$1"
}

# Content tag: Dockerfile + the context files it copies (tracked or new, not ignored; the CA
# files by their hash) + the IDs of the images it can be built on + the uv pin.
content_tag() {
  local dockerfile=$1 paths ignored
  mapfile -t paths < <(copy_sources "$dockerfile" | grep -v '^\.build/' | sed 's#/$##')
  mapfile -t ignored < <(copy_sources "$dockerfile" | grep '^\.build/' | sed 's#/$##')
  {
    sha256sum "$dockerfile"
    if [ "${#paths[@]}" -gt 0 ]; then
      git ls-files -z -co --exclude-standard -- "${paths[@]}" | LC_ALL=C sort -z | xargs -0 -r sha256sum
    fi
    if [ "${#ignored[@]}" -gt 0 ]; then
      find "${ignored[@]}" -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
    fi
    local builder=""
    grep -Eq '^ARG BUILDER_IMAGE(=|$)' "$dockerfile" && builder=${resolved[BUILDER_IMAGE]:?no builder image}
    for ref in "$PYTHON_IMAGE" "$POSTGRES_IMAGE" "$DEBIAN_IMAGE" $builder; do
      "$DOCKER" image inspect -f '{{.Id}}' "$ref" 2>/dev/null || echo "$ref"
    done
    echo "uv=$UV_VERSION"
  } | sha256sum | cut -c1-12
}

# Base image a Dockerfile's final stage names by ARG (for the base.name label).
final_base() {
  local from; from=$(awk 'toupper($1) == "FROM" { f = $2 } END { print f }' "$1")
  case "$from" in
    *PYTHON_IMAGE*) echo "$PYTHON_IMAGE" ;;
    *POSTGRES_IMAGE*) echo "$POSTGRES_IMAGE" ;;
    *DEBIAN_IMAGE*) echo "$DEBIAN_IMAGE" ;;
    *) echo "$from" ;;
  esac
}

build_one() { # name dockerfile
  local name=$1 dockerfile=$2 tag ref args=()
  tag=$(content_tag "$dockerfile")
  ref="conveyor/$name:$tag"
  if [ "${FORCE_BUILD:-0}" != 1 ] && "$DOCKER" image inspect "$ref" >/dev/null 2>&1; then
    say "$ref is up to date"; progress "image $name: up to date ($ref)"; echo "$ref"; return
  fi
  # Build args only for the ARGs the Dockerfile declares (no "not consumed" warnings).
  local GIT_COMMIT; GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  [ -z "$(git status --porcelain 2>/dev/null)" ] || GIT_COMMIT="$GIT_COMMIT-dirty"
  local BUILDER_IMAGE=${resolved[BUILDER_IMAGE]:-} arg
  for arg in BUILDER_IMAGE PYTHON_IMAGE POSTGRES_IMAGE DEBIAN_IMAGE UV_VERSION GIT_COMMIT; do
    grep -Eq "^ARG ${arg}(=|$)" "$dockerfile" && args+=(--build-arg "$arg=${!arg}")
  done
  say "building $ref from $dockerfile (DOCKER_BUILDKIT=$DOCKER_BUILDKIT)"
  local start=$SECONDS dangling_before
  dangling_before=$("$DOCKER" images -q --no-trunc -f dangling=true | sort)
  local log=/dev/stderr
  # Under `make up`, or beside other builds: the output to .build/logs/ (shown if it fails).
  if [ -n "${CONVEYOR_UP_START:-}" ] || [ "${PARALLEL:-0}" = 1 ]; then
    mkdir -p .build/logs; log=.build/logs/build-$name.log; : >"$log"
    progress "image $name: building (log: $log)"
  fi
  if ! "$DOCKER" build -f "$dockerfile" -t "$ref" "${args[@]}" \
    --label "org.opencontainers.image.title=conveyor-$name" \
    --label "org.opencontainers.image.source=$SOURCE_URL" \
    --label "org.opencontainers.image.revision=$GIT_COMMIT" \
    --label "org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --label "org.opencontainers.image.version=$tag" \
    --label "org.opencontainers.image.base.name=$(final_base "$dockerfile")" \
    . >>"$log" 2>&1; then
    [ "$log" = /dev/stderr ] || tail -n 40 "$log" >&2
    say "building $ref failed (see above)"
    say "TLS errors (CERTIFICATE_VERIFY_FAILED)? Builds trust ${extra_ca:-no extra CA} (EXTRA_CA_CERTS): point it at your proxy's CA bundle"
    return 1
  fi
  if [ "$DOCKER_BUILDKIT" = 0 ]; then
    # The classic builder leaves each builder stage behind as a dangling image, extra CA
    # included: remove the ones this build left.
    comm -13 <(echo "$dangling_before") <("$DOCKER" images -q --no-trunc -f dangling=true | sort) \
      | xargs -r "$DOCKER" rmi >/dev/null 2>&1 || true
  fi
  say "built $ref in $((SECONDS - start))s"
  progress "image $name: built in $((SECONDS - start))s ($ref)"
  echo "$ref"
}

wanted=()
for arg in "$@"; do
  if [ "$arg" = --stack ]; then
    mapfile -t -O "${#wanted[@]}" wanted < <(printf '%s\n' "${IMAGES[@]}" | awk -F'|' '$4 == "stack" { print $1 }')
  else
    printf '%s\n' "${IMAGES[@]}" | grep -q "^$arg|" || { say "unknown image '$arg'"; exit 2; }
    wanted+=("$arg")
  fi
done
# The builder is always brought up to date first: the CA or the uv pin may have changed.
[ "${#wanted[@]}" -eq 0 ] || wanted=(builder "${wanted[@]}")

declare -A resolved=()
if [ -s .build/images.env ]; then
  while IFS='=' read -r key value; do [ -n "$key" ] && resolved[$key]=$value; done < .build/images.env
fi
rows=()
for row in "${IMAGES[@]}"; do
  IFS='|' read -r name dockerfile var _ <<<"$row"
  # Not asked for: keep what an earlier run resolved.
  if [ "${#wanted[@]}" -gt 0 ] && [[ " ${wanted[*]} " != *" $name "* ]]; then continue; fi
  if [ ! -f "$dockerfile" ]; then say "skip $name: no $dockerfile yet"; unset "resolved[$var]"; continue; fi
  rows+=("$name|$dockerfile|$var")
done

# The builder first (the others are built FROM it), then the rest: BUILD_JOBS at a time with
# BuildKit; one by one with the classic builder (its clean-up of dangling builder stages must
# not see another build's).
jobs_max=${BUILD_JOBS:-3}
[ "$DOCKER_BUILDKIT" = 1 ] || jobs_max=1
refs=$(mktemp -d .build/refs.XXXXXX)
trap 'rm -rf "$refs"' EXIT
# A build's ref file holds its image's name once it is built, and stays empty if it failed.
for row in "${rows[@]}"; do
  IFS='|' read -r name dockerfile var <<<"$row"
  if [ "$name" = builder ] || [ "$jobs_max" = 1 ]; then
    build_one "$name" "$dockerfile" >"$refs/$var" || exit 1
    resolved[$var]=$(cat "$refs/$var")
    continue
  fi
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do sleep 1; done
  PARALLEL=1 build_one "$name" "$dockerfile" >"$refs/$var" &
done
wait
for row in "${rows[@]}"; do
  IFS='|' read -r name _ var <<<"$row"
  [ -s "$refs/$var" ] || { say "image $name did not build (see above)"; exit 1; }
  resolved[$var]=$(cat "$refs/$var")
done
out=$(mktemp .build/images.env.XXXXXX)
for row in "${IMAGES[@]}"; do
  IFS='|' read -r _ _ var _ <<<"$row"
  if [ -n "${resolved[$var]:-}" ]; then echo "$var=${resolved[$var]}" >> "$out"; fi
done
mv "$out" .build/images.env
say "resolved -> .build/images.env:"
sed 's/^/  /' .build/images.env >&2
prune
