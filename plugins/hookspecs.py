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


def pytest_robustness_report(report: dict[str, Any], config: pytest.Config) -> None:
    """Called once per run, on the controller, with the final report (``robustness.json`` as written: strict
    JSON, so ``report`` holds no NaN) after the report files are in place; for sending results elsewhere
    (MLflow, W&B, a database) without the harness depending on any of them. Not called when the run
    collected no property test (no report is written then). An exception raised here fails the run after
    the files are written: catch it in the hook if the push is best-effort.

    Example (conftest.py, docs/exports.md has MLflow and W&B versions): post the failing cells::

        import json, os, urllib.request

        def pytest_robustness_report(report, config):
            failed = [r for r in report["results"] if (r["gate"] or {}).get("verdict") == "fail"]
            body = json.dumps({"run_id": report["run"]["run_id"], "failed": failed}).encode()
            urllib.request.urlopen(os.environ["RESULTS_URL"], data=body)
    """
