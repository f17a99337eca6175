"""Hooks that conftest.py files and plugins can implement to customise the robustness gate."""
from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec(firstresult=True)
def pytest_robustness_threshold(config: pytest.Config, row: dict[str, Any]) -> Any:
    """Return the :class:`clip_robustness.plugins.config.Threshold` that gates ``row``, or None to use the defaults.

    Example (conftest.py): relax the OOD bound for one experimental model::

        from clip_robustness.plugins.config import Threshold

        def pytest_robustness_threshold(config, row):
            if row["model"] == "embedded:rn-clip-small" and row["metric"] == "auroc":
                return Threshold(property="ood", metric="auroc", min=0.6, reason="small-data model")
    """


def pytest_robustness_report_row(config: pytest.Config, row: dict[str, Any]) -> None:
    """Called in the process that recorded ``row`` (before it is shipped); may add keys to ``row["extra"]``.

    Example: tag every row with the CI job::

        import os

        def pytest_robustness_report_row(config, row):
            row["extra"]["ci_job"] = os.environ.get("CI_JOB_ID", "")
    """
