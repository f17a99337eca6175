"""What every part of the report reads off a row: verdicts, metric direction and bounds, number
formats, the property registry's order, titles and headline metrics, and which of a cell's
measurements a summary quotes (:func:`primary_row`).

Metric direction and bounds come from :data:`clip_robustness.plugins.metrics.METRICS` (the row's own
``higher_is_better`` only for metrics the registry does not know); property metadata from
:data:`clip_robustness.plugins.properties.PROPERTIES`.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Iterable, Sequence

from clip_robustness.fixtures.conditions import join_condition, parse_condition
from clip_robustness.plugins.metrics import METRICS
from clip_robustness.plugins.properties import PROPERTIES

VERDICTS = ("fail", "inconclusive", "pass")
NO_GATE = "none"
VERDICT_RANK = {"fail": 0, "inconclusive": 1, "pass": 2, NO_GATE: 3}
VERDICT_LABEL = {"fail": "fail", "inconclusive": "inconclusive", "pass": "pass", NO_GATE: "no gate"}


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort ``severity=10`` after ``severity=2``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def num(x: Any) -> float:
    """A row's value as a float; ``None`` (not measured) is NaN."""
    return math.nan if x is None else float(x)


def higher_is_better(metric: str, row: dict[str, Any] | None = None) -> bool | None:
    """Direction from the metric registry, else from the row; ``None`` when neither says."""
    if metric in METRICS:
        return METRICS[metric].higher_is_better
    value = (row or {}).get("higher_is_better")
    return value if isinstance(value, bool) else None


def arrow(hib: bool | None) -> str:
    """The direction mark a table shows beside a metric."""
    return "↑" if hib else "↓" if hib is False else ""


def metric_limits(metric: str) -> tuple[float | None, float | None]:
    """Finite registry bounds of a metric, for axis limits."""
    info = METRICS.get(metric)
    if info is None:
        return None, None
    return (info.lower_bound if math.isfinite(info.lower_bound) else None,
            info.upper_bound if math.isfinite(info.upper_bound) else None)


def verdict_of(row: dict[str, Any]) -> str:
    """The row's gate verdict, or ``NO_GATE``."""
    gate = row.get("gate")
    return gate["verdict"] if gate else NO_GATE


def worst_verdict(verdicts: Iterable[str]) -> str:
    """fail < inconclusive < pass < no gate."""
    return min(verdicts, key=VERDICT_RANK.__getitem__, default=NO_GATE)


def badness(row: dict[str, Any]) -> tuple[int, float]:
    """Sort key, worst first: failed gates, then the value furthest in the bad direction."""
    value = num(row.get("value"))
    hib = higher_is_better(row["metric"], row)
    oriented = math.inf if math.isnan(value) or hib is None else (value if hib else -value)
    return VERDICT_RANK[verdict_of(row)], oriented


def fmt(x: Any, digits: int = 4) -> str:
    """A value to ``digits`` significant digits; ``n/a`` when not measured."""
    if x is None:
        return "n/a"
    x = float(x)
    return "nan" if math.isnan(x) else f"{x:.{digits}g}"


def fmt_count(x: Any) -> str:
    """A count, or ``n/a`` when unknown."""
    return "n/a" if x is None else str(x)


def fmt_ci(ci: Sequence[Any] | None) -> str:
    """``[lo, hi]`` to 4 significant digits; a dash when the row has no CI."""
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "—"


def without(row: dict[str, Any], *keys: str) -> str:
    """The row's condition with ``keys`` left out (canonical string)."""
    return join_condition({k: v for k, v in parse_condition(row["condition"]).items() if k not in keys})


def ordered_properties(props: Iterable[str]) -> list[str]:
    """The registry's order (``PROPERTY_LIST``, then properties registered by a project); properties it
    does not know follow, sorted."""
    present = set(props)
    return [name for name in PROPERTIES if name in present] + sorted(present - PROPERTIES.keys())


def property_title(prop: str) -> str:
    """The section heading: the registry's title, else the property's own name."""
    return PROPERTIES[prop].title if prop in PROPERTIES else prop


def headline_metric(prop: str, rows: Sequence[dict[str, Any]]) -> str | None:
    """The metric a summary cell and the six-factor view show: the first of the registry's ``headline``
    that the property recorded, else its most frequent metric."""
    present = Counter(r["metric"] for r in rows)
    for metric in PROPERTIES[prop].headline if prop in PROPERTIES else ():
        if metric in present:
            return metric
    return min(present, key=lambda m: (-present[m], m)) if present else None


def primary_row(rows: Sequence[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any] | None:
    """The row a summary quotes among the ways one cell was measured: the clean condition, the
    run's first template set, then the values every property's ``preferred`` names (unscaled logits, the MCM
    score, log-likelihood scoring...)."""
    templates = (run.get("config") or {}).get("templates") or [None]
    preferred = {key: value for prop in PROPERTIES.values() for key, value in prop.preferred.items()}
    if templates[0]:
        preferred["templates"] = templates[0]

    def penalty(condition: str) -> int:
        return sum(1 for k, v in parse_condition(condition).items() if k in preferred and v != preferred[k])

    return min(rows, key=lambda r: (penalty(r["condition"]), len(r["condition"]), r["condition"]), default=None)


def validate_report(report: Any) -> None:
    """Raise a ValueError naming the first problem of a parsed robustness.json object (the one check every
    reader uses: clip_robustness.plugins.rows.Report.problems)."""
    from clip_robustness.plugins.rows import Report

    problems = Report.problems(report, "report")
    if problems:
        raise ValueError(problems[0])

