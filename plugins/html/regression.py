"""The regression view: every cell compared with the baseline run (gated or not), worst verdict first,
and a change-vs-baseline forest plot."""
from __future__ import annotations

import math
from typing import Any

from clip_robustness.plugins.html.figures import REGRESSION_VIEW, FigureRenderer, Plot, cell_label
from clip_robustness.plugins.html.rows import NO_GATE, VERDICT_RANK, arrow, fmt, fmt_ci, higher_is_better, num

MAX_FOREST_ROWS = 40  # regression comparisons drawn in the change-vs-baseline plot (all are in the table)


def _comparison_of(row: dict[str, Any]) -> dict[str, Any] | None:
    """The baseline comparison of a row: its regression gate, or an ungated comparison in ``extra``."""
    gate = row.get("gate") or {}
    if gate.get("kind") == "regression":
        return gate
    comparison = (row.get("extra") or {}).get("comparison")
    return {**comparison, "verdict": NO_GATE} if comparison else None


def regression_view(rows: list[dict[str, Any]], renderer: FigureRenderer) -> dict[str, Any] | None:
    """The table of baseline comparisons (value, baseline value, paired change with its CI and p-value, the
    allowed drop, the verdict) and a forest plot of the changes in each metric's good direction: the reader
    sees which cells got worse than the baseline beyond the noise, which improved, and which are too
    uncertain to say. None when the run compared nothing."""
    reg = sorted((r for r in rows if _comparison_of(r)), key=_regression_rank)
    if not reg:
        return None
    table = []
    for r in reg:
        g = _comparison_of(r)
        delta = g.get("delta")
        table.append({
            "model": r["model"], "baseline": g.get("baseline_model") or r["model"], "property": r["property"],
            "dataset": r["dataset"], "condition": r["condition"], "metric": r["metric"],
            "arrow": arrow(higher_is_better(r["metric"], r)), "value": fmt(r.get("value")),
            "baseline_value": fmt(g.get("baseline_value")),
            "delta": "n/a" if delta is None else f"{float(delta):+.4g}", "ci": fmt_ci(g.get("ci")),
            "p_value": fmt(g.get("p_value"), 3), "max_drop": fmt(g.get("max_drop"), 3), "verdict": g["verdict"],
            "message": g.get("message") or "", "method": g.get("method") or "",
            "paired": _paired(g),
        })
    shown = reg[:MAX_FOREST_ROWS]
    figure = renderer.render(Plot("Change vs baseline", lambda fig: _forest(fig, shown), (7.0, 0.9 + 0.22 * len(shown)),
                                  "Change in the metric's good direction (+ = better) with its 95% CI; "
                                  "red tick: the allowed drop."), view=REGRESSION_VIEW)
    unpaired = sum(t["paired"] is False for t in table)
    unknown = sum(t["paired"] is None for t in table)
    return {"rows": table, "figure": figure, "omitted": len(reg) - len(shown), "unpaired": unpaired,
            "lead": _lead(len(table), unpaired, unknown)}


def _paired(comparison: dict[str, Any]) -> bool | None:
    """Whether a comparison was made on the same samples (a paired test), from its recorded method; None when it
    records none."""
    method = str(comparison.get("method") or "")
    if not method:
        return None
    return not method.startswith(("unpaired", "not compared"))


def _lead(total: int, unpaired: int, unknown: int = 0) -> str:
    """The section's first sentence: which comparisons are paired, so none reads as paired that was not."""
    if unpaired == unknown == 0:
        return "Each candidate against its baseline on the same samples (paired test)."
    paired = total - unpaired - unknown
    parts = [f"{paired} of the {total} comparisons are on the same samples (paired test)"]
    if unpaired:
        parts.append(f"{unpaired} are unpaired or not compared (the two values with their CIs as independent "
                     "estimates, or a value that is undefined): the method column says why")
    if unknown:
        parts.append(f"{unknown} record no method")
    return "Each candidate against its baseline: " + "; ".join(parts) + "."


def _regression_rank(row: dict[str, Any]) -> tuple[Any, ...]:
    g = _comparison_of(row)
    return VERDICT_RANK[g["verdict"]], row["model"], row["property"], row["dataset"], row["condition"], row["metric"]


def _forest(fig: Any, rows: list[dict[str, Any]]) -> None:
    """A row per comparison: the change (+ = better) with its CI, coloured by verdict, and the allowed drop."""
    ax = fig.add_subplot()
    colors = {"fail": "#c62828", "inconclusive": "#e0a800", "pass": "#2e7d32", NO_GATE: "#777777"}
    for i, r in enumerate(rows):
        g = _comparison_of(r)
        sign = -1.0 if higher_is_better(r["metric"], r) is False else 1.0  # plot "+ = better"
        delta = sign * num(g.get("delta"))
        ci = sorted(sign * num(c) for c in (g.get("ci") or (math.nan, math.nan)))
        if not any(map(math.isnan, ci)):
            ax.plot(ci, [i, i], color=colors[g["verdict"]], lw=1.6)
        ax.plot([delta], [i], "o", color=colors[g["verdict"]], ms=4)
        if g.get("max_drop") is not None:
            ax.plot([-float(g["max_drop"])], [i], "|", color="#c62828", ms=9, mew=1.5)
    ax.axvline(0, color="#444444", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{r['model']} · {r['metric']} · {cell_label(r)}" for r in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("change vs baseline (+ = better)")
