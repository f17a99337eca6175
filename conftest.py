"""Loads the robustness plugin and its fixtures; registers hypothesis profiles. Nothing heavy here."""
import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["plugins.robustness"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights never come from a hub at test time unless asked
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci", max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
