#!/usr/bin/env bash
# Create .venv and install the dependencies listed in pyproject.toml ([project.dependencies]).
# The harness runs from the repository root, so nothing of ours is installed into site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# RB_EXTRAS="imagenet-x" also installs optional extras (CI uses it to cross-check against the ImageNet-X toolkit)
mapfile -t deps < <(RB_EXTRAS="${RB_EXTRAS:-}" .venv/bin/python -c '
import os, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = list(project["dependencies"])
for extra in filter(None, os.environ["RB_EXTRAS"].split(",")):
    deps += project["optional-dependencies"][extra]
print("\n".join(deps))')
.venv/bin/python -m pip install -q --disable-pip-version-check "${deps[@]}"
