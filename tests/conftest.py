"""Shared helpers for the harness's own tests."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
RANDOM_MODEL = "world-rn-tiny:random"  # a zoo architecture with seeded random weights: fast plumbing


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Warnings are errors in the harness's own tests only (never in a user's measurement): the ini's
    filters are applied after "error", and any filterwarnings mark of a test still overrides them."""
    mark = pytest.mark.filterwarnings("error", *config.getini("filterwarnings"))
    for item in items:
        if item.path.is_relative_to(TESTS):
            item.add_marker(mark, append=False)


@pytest.fixture
def run_harness(pytester: pytest.Pytester):
    """Run pytest in a subprocess on ``pytester``'s folder with the robustness plugin loaded."""
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\naddopts = ['--strict-markers']\n")

    def run(*args: str, timeout: float = 300) -> pytest.RunResult:
        env_path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        pytester._monkeypatch.setenv("PYTHONPATH", env_path)
        pytester._monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        return pytester.runpytest_subprocess("-p", "plugins.robustness", "-p", "no:randomly",
                                             "--embedding-cache", str(pytester.path / ".emb"), *args,
                                             timeout=timeout)

    return run
