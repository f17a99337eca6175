"""Gates: a threshold rule applied to a report row gives a verdict and a one-sentence message.

A bound passes only when the metric's whole confidence interval is on the right side, fails only when
the whole interval is on the wrong side, and is *inconclusive* otherwise (the data cannot tell).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from plugins.config import Threshold

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


class InconclusiveGateWarning(UserWarning):
    """A bound whose confidence interval straddles it (fails the run only with --rb-strict/--strict)."""


def select_threshold(rules: Iterable[Threshold], row: dict[str, Any], *, kind: str = "bound") -> Threshold | None:
    """The last matching rule with a bound (or ``max_drop``) wins: --thresholds overrides pyproject."""
    chosen = None
    for rule in rules:
        if not rule.matches(row):
            continue
        if kind == "bound" and (rule.min is not None or rule.max is not None):
            chosen = rule
        if kind == "regression" and rule.max_drop is not None:
            chosen = rule
    return chosen


def _fmt(x: float | None) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def describe_cell(row: dict[str, Any]) -> str:
    where = f"for {row['model']} on {row['dataset']}"
    return where + (f" under {row['condition']}" if row.get("condition") else "")


def bound_verdict(row: dict[str, Any], rule: Threshold) -> dict[str, Any]:
    """Evaluate a min/max rule on a row (needs ``value`` and optionally ``ci``)."""
    value = row.get("value")
    lo, hi = row.get("ci") or (value, value)
    lo = value if lo is None or math.isnan(lo) else lo
    hi = value if hi is None or math.isnan(hi) else hi
    metric = f"{row['metric']}={_fmt(value)}"
    if row.get("ci"):
        metric += f" (95% CI {_fmt(lo)}–{_fmt(hi)})"
    gate: dict[str, Any] = {"kind": "bound", "min": rule.min, "max": rule.max, "rule": rule.origin}
    if value is None or math.isnan(value):
        gate.update(verdict=FAIL, message=f"{row['metric']} is undefined (nan) {describe_cell(row)}, so bound "
                                          f"{'>= ' + _fmt(rule.min) if rule.min is not None else '<= ' + _fmt(rule.max)} cannot be met.")
        return gate
    verdicts = []
    if rule.min is not None:
        verdicts.append((PASS if lo >= rule.min else FAIL if hi < rule.min else INCONCLUSIVE,
                         f"is below the bound {_fmt(rule.min)}", f"straddles the bound {_fmt(rule.min)}"))
    if rule.max is not None:
        verdicts.append((PASS if hi <= rule.max else FAIL if lo > rule.max else INCONCLUSIVE,
                         f"exceeds the bound {_fmt(rule.max)}", f"straddles the bound {_fmt(rule.max)}"))
    order = {FAIL: 0, INCONCLUSIVE: 1, PASS: 2}
    verdict, fail_text, unsure_text = min(verdicts, key=lambda v: order[v[0]])
    gate["verdict"] = verdict
    if verdict == FAIL:
        gate["message"] = f"{metric} {fail_text} {describe_cell(row)}."
    elif verdict == INCONCLUSIVE:
        gate["message"] = f"{metric} {unsure_text} {describe_cell(row)}: more samples are needed to decide."
    else:
        gate["message"] = f"{metric} meets its bound {describe_cell(row)}."
    if rule.reason:
        gate["message"] += f" ({rule.reason})"
    return gate
