"""Hypothesis profiles for this repository's runs. Nothing heavy here.

The plugin itself is loaded by its `pytest11` entry point (the package is installed editable by
scripts/setup.sh), exactly as in a team's repository where the wheel is installed.
"""
import os

from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights never come from a hub at test time unless asked
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci", max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
