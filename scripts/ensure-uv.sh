#!/usr/bin/env bash
# Install the project's uv into .build/tools (never relying on PATH) and print its path.
# The version is uv's own pin, `required-version` in pyproject.toml. uv comes from PyPI through
# the first python3 on PATH (`pip install --target`: no user site, no PATH change); where that
# python3 has no pip, Debian's python3-pip is installed (as root). pip trusts the host's CA
# bundle, as everything else here does (TLS-inspecting proxies).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

TOOLS=.build/tools
UV="$TOOLS/bin/uv"
say() { echo "ensure-uv: $*" >&2; }

version=$(sed -n 's/^required-version *= *"==\([0-9.]*\)"/\1/p' pyproject.toml)
[ -n "$version" ] || { say "pyproject.toml has no [tool.uv] required-version = \"==X.Y.Z\""; exit 1; }

if [ -x "$UV" ] && [ "$("$UV" --version 2>/dev/null | awk '{print $2}')" = "$version" ]; then
  echo "$PWD/$UV"
  exit 0
fi

python=$(command -v python3 || true)
[ -n "$python" ] || { say "no python3 on PATH: install Python 3.11 first"; exit 1; }
if ! "$python" -m pip --version >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "$python has no pip: installing Debian's python3-pip"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
    python=/usr/bin/python3
  else
    say "$python has no pip, and this is not a root Debian/Ubuntu shell: install pip for it"
    exit 1
  fi
fi

host_bundle=/etc/ssl/certs/ca-certificates.crt
if [ -z "${PIP_CERT:-}" ] && [ -r "$host_bundle" ]; then export PIP_CERT=$host_bundle; fi
say "installing uv $version into $TOOLS (with $python)"
rm -rf "$TOOLS"
PIP_REQUIRE_VIRTUALENV=0 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
  "$python" -m pip install --quiet --no-warn-script-location --target "$TOOLS" "uv==$version"
"$UV" --version >&2
echo "$PWD/$UV"
