"""The corruption view (2D and 3D): accuracy against severity per corruption family, families with the
largest accuracy drop first."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Sequence

import numpy as np

from clip_robustness.fixtures.conditions import parse_condition
from clip_robustness.plugins.html.figures import Plot, SectionContext, chunks, limit_axis
from clip_robustness.plugins.html.rows import num, primary_row, without

PANELS_PER_FIGURE = 8  # corruption families per accuracy-vs-severity figure


def _severity(row: dict[str, Any]) -> float | None:
    try:
        return float(parse_condition(row["condition"])["severity"])
    except (KeyError, ValueError):
        return None  # no or non-numeric severity: the row stays in the table only


def _ci_bounds(row: dict[str, Any]) -> tuple[float, float]:
    ci, value = row.get("ci") or (None, None), num(row.get("value"))
    return (value if ci[0] is None else float(ci[0]), value if ci[1] is None else float(ci[1]))


def _clean_top1(ctx: SectionContext, model: str, dataset: str) -> float:
    """Clean accuracy of a model on a dataset: a top1 row of this property without corruption keys,
    else the accuracy property's primary cell."""
    candidates = [r for r in ctx.rows if r["metric"] == "top1" and r["model"] == model and r["dataset"] == dataset
                  and not {"corruption", "severity"} & parse_condition(r["condition"]).keys()]
    candidates = candidates or [r for r in ctx.all_rows if r["property"] == "accuracy" and r["metric"] == "top1"
                                and r["model"] == model and r["dataset"] == dataset]
    best = primary_row(candidates, ctx.run)
    return num(best["value"]) if best else math.nan


def corruption_plots(ctx: SectionContext) -> list[Plot]:
    """Per dataset, a panel per corruption family: top-1 against severity (0 = clean) for every model with
    its CI band. The reader sees how fast each model's accuracy falls as a corruption strengthens, which
    families hurt most (panels ordered by mean drop) and whether models degrade alike."""
    rows = [r for r in ctx.rows if r["metric"] == "top1" and _severity(r) is not None]
    families: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        families[(r["dataset"], without(r, "severity"))][r["model"]].append(r)
    clean = {(m, d): _clean_top1(ctx, m, d) for (d, _), per in families.items() for m in per}

    def drop(item: tuple[tuple[str, str], dict[str, list[dict[str, Any]]]]) -> float:
        (dataset, _), per_model = item
        drops = [clean[(m, dataset)] - num(r["value"]) for m, rs in per_model.items() for r in rs]
        drops = [d for d in drops if not math.isnan(d)]
        if drops:
            return -float(np.mean(drops))
        accs = [v for rs in per_model.values() for v in (num(r["value"]) for r in rs) if not math.isnan(v)]
        return float(np.mean(accs)) if accs else math.inf

    ranked = sorted(families.items(), key=lambda kv: (drop(kv), kv[0]))
    by_dataset: dict[str, list[Any]] = defaultdict(list)
    for item in ranked:
        by_dataset[item[0][0]].append(item)

    def draw(chunk: Sequence[Any]) -> Callable[[Any], None]:
        def fill(fig: Any) -> None:
            ncols = min(len(chunk), 4)
            axes = fig.subplots((len(chunk) + ncols - 1) // ncols, ncols, squeeze=False, sharey=True).ravel()
            for ax, ((dataset, family), per_model) in zip(axes, chunk):
                for model in ctx.styles.sort(per_model):
                    pts = sorted(per_model[model], key=_severity)
                    x = [0.0] + [_severity(r) for r in pts]
                    y = [clean[(model, dataset)]] + [num(r["value"]) for r in pts]
                    ax.plot(x, y, marker="o", ms=3, lw=1.2, color=ctx.styles.color(model), label=model)
                    lo, hi = zip(*map(_ci_bounds, pts))
                    ax.fill_between(x[1:], lo, hi, color=ctx.styles.color(model), alpha=0.12, lw=0)
                ax.set_title(family.replace("corruption=", ""), fontsize=8)
                ax.set_xticks(sorted({0.0} | {_severity(r) for rs in per_model.values() for r in rs}))
                ax.set_xlabel("severity (0 = clean)")
                limit_axis(ax.set_ylim, "top1")
            for ax in axes[len(chunk):]:
                ax.set_visible(False)
            axes[0].set_ylabel("top1")
            axes[0].legend(loc="lower left")
        return fill

    plots = []
    for dataset, items in by_dataset.items():
        for i, chunk in enumerate(chunks(items, PANELS_PER_FIGURE)):
            nrows = (len(chunk) + 3) // 4
            part = f" ({i + 1})" if len(items) > PANELS_PER_FIGURE else ""
            plots.append(Plot(f"Accuracy vs severity · {dataset}{part}", draw(chunk),
                              (2.6 * min(len(chunk), 4) + 0.4, 2.4 * nrows + 0.3),
                              "Families ordered by mean accuracy drop; shading: 95% CI."))
    return plots
