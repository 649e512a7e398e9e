#!/usr/bin/env bash
# Make sure `uv` is on PATH: it installs and locks every Python environment of the project.
set -euo pipefail
command -v uv >/dev/null 2>&1 && exit 0
echo "uv not found: installing it from PyPI with pip" >&2
python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
command -v uv >/dev/null 2>&1 || { echo "uv installed but not on PATH (try ~/.local/bin)" >&2; exit 1; }
