"""Bound gates: verdicts by confidence interval, and the sentence a failure prints."""
from __future__ import annotations

import math

import pytest

from plugins.config import Threshold
from plugins.gates import bound_verdict, select_threshold

ROW = {"property": "calibration", "model": "embedded:rn-clip", "dataset": "world:test",
       "condition": "templates=single", "metric": "ece"}


@pytest.mark.parametrize("value, ci, rule, verdict", [
    (0.03, (0.02, 0.04), Threshold("calibration", "ece", max=0.05), "pass"),
    (0.06, (0.055, 0.07), Threshold("calibration", "ece", max=0.05), "fail"),
    (0.045, (0.03, 0.06), Threshold("calibration", "ece", max=0.05), "inconclusive"),
    (0.055, (0.04, 0.07), Threshold("calibration", "ece", max=0.05), "inconclusive"),  # point fails, CI straddles
    (0.9, (0.88, 0.92), Threshold("calibration", "ece", min=0.85), "pass"),
    (0.8, (0.78, 0.84), Threshold("calibration", "ece", min=0.85), "fail"),
    (0.5, None, Threshold("calibration", "ece", min=0.4, max=0.6), "pass"),
    (0.7, None, Threshold("calibration", "ece", min=0.4, max=0.6), "fail"),
    (0.5, (0.3, 0.7), Threshold("calibration", "ece", min=0.2, max=0.6), "inconclusive"),
])
def test_verdicts(value, ci, rule, verdict):
    gate = bound_verdict({**ROW, "value": value, "ci": list(ci) if ci else None}, rule)
    assert gate["verdict"] == verdict and gate["kind"] == "bound"


def test_failure_sentence():
    gate = bound_verdict({**ROW, "value": 0.112, "ci": [0.1, 0.125]},
                         Threshold("calibration", "ece", max=0.08, reason="release bar"))
    assert gate["message"] == ("ece=0.112 (95% CI 0.1–0.125) exceeds the bound 0.08 for embedded:rn-clip on "
                               "world:test under templates=single. (release bar)")


def test_nan_value_fails_not_passes():
    gate = bound_verdict({**ROW, "value": math.nan, "ci": [math.nan, math.nan]}, Threshold("calibration", "ece", max=0.1))
    assert gate["verdict"] == "fail" and "undefined" in gate["message"]


def test_last_matching_rule_wins():
    rules = [Threshold("calibration", "ece", max=0.05, origin="pyproject"),
             Threshold("calibration", "ece", model="embedded:*", max=0.1, origin="cli"),
             Threshold("ood", "ece", max=0.01, origin="other property"),
             Threshold("calibration", "ece", max_drop=0.01, origin="regression only")]
    assert select_threshold(rules, ROW).origin == "cli"
    assert select_threshold(rules, ROW, kind="regression").origin == "regression only"
    assert select_threshold(rules, {**ROW, "metric": "nll"}) is None
