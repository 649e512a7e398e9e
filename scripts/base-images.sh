#!/usr/bin/env bash
# Resolve the base images every Dockerfile names by convention. For each one: use it if it is
# present locally or can be pulled (a bounded, quick try); otherwise build a local stand-in
# from Debian's packages: debootstrap (rootfs tarball cached) -> `docker import` as
# conveyor-base/debian:bookworm-slim -> docker/python and docker/postgres on top of it.
# A stand-in is rebuilt only when its inputs change (label conveyor.input-hash).
# Writes the resolved names to .build/base-images.env (PYTHON_IMAGE, POSTGRES_IMAGE, DEBIAN_IMAGE).
#
# Knobs: DOCKER (client, default /usr/bin/docker), APT_MIRROR (Debian mirror, plain HTTP; baked
#        into the Debian stand-in's sources.list, so every stand-in built on it uses it),
#        CONVEYOR_CACHE (rootfs cache dir), PULL_TIMEOUT (s), FORCE_STANDINS=1 (skip pulls).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER="${DOCKER:-/usr/bin/docker}"
APT_MIRROR="${APT_MIRROR:-http://deb.debian.org/debian}"
CACHE="${CONVEYOR_CACHE:-/var/cache/conveyor}"
PULL_TIMEOUT="${PULL_TIMEOUT:-20}"
SUITE=bookworm
STANDIN_PREFIX=conveyor-base
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-1}"

say() { echo "base-images: $*" >&2; }
have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
label_of() { "$DOCKER" image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }
image_id() { "$DOCKER" image inspect -f '{{.Id}}' "$1"; }

# Local or pullable within PULL_TIMEOUT seconds?
available() {
  local ref=$1
  [ "${FORCE_STANDINS:-0}" = 1 ] && return 1
  have_image "$ref" && return 0
  timeout "$PULL_TIMEOUT" "$DOCKER" pull -q "$ref" >/dev/null 2>&1
}

# Remove the image a rebuild replaced, if nothing else uses it (no tag, no child, no container).
drop_superseded() {
  [ -n "$1" ] && [ -z "$("$DOCKER" image inspect -f '{{join .RepoTags ","}}' "$1" 2>/dev/null)" ] \
    && "$DOCKER" rmi "$1" >/dev/null 2>&1 || true
}

# Hash of a stand-in's inputs: its files, the mirror and the image it is built on.
input_hash() { # dir parent-ref
  { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    echo "mirror=$APT_MIRROR parent=$(image_id "$2")"; } | sha256sum | cut -c1-16
}

debian_standin() {
  local ref="$STANDIN_PREFIX/debian:$SUITE-slim"
  local key; key=$({ echo "$SUITE minbase $APT_MIRROR"; sed -n '/^debian_standin()/,/^}/p' "$0"; } | sha256sum | cut -c1-16)
  if have_image "$ref" && [ "$(label_of "$ref" conveyor.input-hash)" = "$key" ]; then
    say "$ref is up to date"; echo "$ref"; return
  fi
  local tarball="$CACHE/debian-$SUITE-minbase-$key.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { say "debootstrap is missing: run 'make engine' as root"; exit 1; }
    mkdir -p "$CACHE"
    local root; root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    say "debootstrap --variant=minbase $SUITE from $APT_MIRROR (cached in $tarball)"
    debootstrap --variant=minbase "$SUITE" "$root" "$APT_MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || { say "debootstrap failed, see $CACHE/debootstrap.log"; rm -rf "$root"; exit 1; }
    # Slim like the official image: apt sources over plain HTTP, no docs, no caches.
    cat > "$root/etc/apt/sources.list" <<SOURCES
deb $APT_MIRROR $SUITE main
deb $APT_MIRROR $SUITE-updates main
deb ${APT_SECURITY_MIRROR:-http://deb.debian.org/debian-security} $SUITE-security main
SOURCES
    cat > "$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
      > "$root/etc/apt/apt.conf.d/docker-no-recommends"
    cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
      "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/*.log
    find "$root/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  say "importing $tarball as $ref"
  local old; old=$(image_id "$ref" 2>/dev/null || true)
  "$DOCKER" import \
    --change 'CMD ["bash"]' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL conveyor.input-hash=$key org.opencontainers.image.title=debian-$SUITE-slim-standin" \
    "$tarball" "$ref" >/dev/null
  drop_superseded "$old"
  echo "$ref"
}

dockerfile_standin() { # name tag parent-ref build-arg-name
  local name=$1 tag=$2 parent=$3 arg=$4 dir="docker/$1"
  local ref="$STANDIN_PREFIX/$name:$tag"
  local key; key=$(input_hash "$dir" "$parent")
  if have_image "$ref" && [ "$(label_of "$ref" conveyor.input-hash)" = "$key" ]; then
    say "$ref is up to date"; echo "$ref"; return
  fi
  say "building $ref from $dir on $parent"
  local start=$SECONDS old; old=$(image_id "$ref" 2>/dev/null || true)
  "$DOCKER" build -q --build-arg "$arg=$parent" \
    --label "conveyor.input-hash=$key" -t "$ref" "$dir" >/dev/null \
    || { say "building $ref failed (see above)"; return 1; }
  say "built $ref in $((SECONDS - start))s"
  drop_superseded "$old"
  echo "$ref"
}

start=$SECONDS
DEBIAN_IMAGE=debian:$SUITE-slim
PYTHON_IMAGE=python:3.11-slim-$SUITE
POSTGRES_IMAGE=postgres:15-$SUITE
available "$DEBIAN_IMAGE" || DEBIAN_IMAGE=$(debian_standin)
# The Python and Postgres stand-ins, both on Debian's: built side by side (each mostly waits on
# apt), each one's name in its own file.
resolved=$(mktemp -d)
trap 'rm -rf "$resolved"' EXIT
available "$PYTHON_IMAGE" \
  || dockerfile_standin python "3.11-slim-$SUITE" "$DEBIAN_IMAGE" DEBIAN_IMAGE >"$resolved/python" &
available "$POSTGRES_IMAGE" \
  || dockerfile_standin postgres "15-$SUITE" "$DEBIAN_IMAGE" DEBIAN_IMAGE >"$resolved/postgres" &
wait
for which in python postgres; do
  [ ! -e "$resolved/$which" ] || [ -s "$resolved/$which" ] || { say "the $which stand-in did not build"; exit 1; }
done
[ ! -s "$resolved/python" ] || PYTHON_IMAGE=$(cat "$resolved/python")
[ ! -s "$resolved/postgres" ] || POSTGRES_IMAGE=$(cat "$resolved/postgres")

mkdir -p .build/ca && touch .build/ca/.keep
cat > .build/base-images.env <<ENVFILE
DEBIAN_IMAGE=$DEBIAN_IMAGE
PYTHON_IMAGE=$PYTHON_IMAGE
POSTGRES_IMAGE=$POSTGRES_IMAGE
ENVFILE
say "resolved in $((SECONDS - start))s -> .build/base-images.env:"
sed 's/^/  /' .build/base-images.env >&2
