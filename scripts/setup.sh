#!/usr/bin/env bash
# Create .venv and install the dependencies listed in pyproject.toml ([project.dependencies]).
# Then installs this repository itself, editable, as the `clip_robustness` package (its pytest11 entry point
# loads the plugin; `clip-robustness` runs the suite); nothing is installed as `plugins` or `fixtures`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# This repository always gets the extras its README commands and tests use: lmm (transformers, for the lmm
# property) and test (jsonschema). RB_EXTRAS="imagenet-x" adds more (CI: the ImageNet-X toolkit cross-check).
mapfile -t deps < <(RB_EXTRAS="lmm,test,${RB_EXTRAS:-}" .venv/bin/python -c '
import os, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = list(project["dependencies"])
for extra in dict.fromkeys(filter(None, os.environ["RB_EXTRAS"].split(","))):
    deps += project["optional-dependencies"][extra]
print("\n".join(deps))')
.venv/bin/python -m pip install -q --disable-pip-version-check "${deps[@]}"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
