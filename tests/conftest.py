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


@pytest.fixture(scope="session", autouse=True)
def _report_rendering_loaded() -> None:
    """pytester restores ``sys.modules`` after every test that uses it, dropping the modules first imported
    during that test. A report rendered in-process there (``clip_robustness.plugins.merge``) would leave half of matplotlib
    to be imported again beside the other half (two ``SubplotSpec`` classes, and a ValueError in the next
    rendering). So the drawing stack is loaded once per process, before any test."""
    import io

    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots(1, 2, squeeze=False)[0][0].bar(["a"], [1.0])
    fig.savefig(io.BytesIO(), format="svg")


@pytest.fixture
def run_harness(pytester: pytest.Pytester):
    """Run pytest in a subprocess on ``pytester``'s folder (the robustness plugin loads by its entry point)."""
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\naddopts = ['--strict-markers']\n")

    def run(*args: str, timeout: float = 300) -> pytest.RunResult:
        pytester._monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        # the plugin loads by its entry point (the package is installed), as in a user's repository
        return pytester.runpytest_subprocess("-p", "no:randomly",
                                             "--embedding-cache", str(pytester.path / ".emb"), *args,
                                             timeout=timeout)

    return run
