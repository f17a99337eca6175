#!/usr/bin/env bash
# Create .venv and install the dependencies listed in pyproject.toml ([project.dependencies]).
# The harness runs from the repository root, so nothing of ours is installed into site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
mapfile -t deps < <(.venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
.venv/bin/python -m pip install -q --disable-pip-version-check "${deps[@]}"
