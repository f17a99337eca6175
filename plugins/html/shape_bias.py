"""The shape-bias view: per class, the fraction of cue-conflict decisions made by shape, one marker per
model (model-vs-human style)."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from clip_robustness.fixtures.conditions import parse_condition
from clip_robustness.plugins.html.figures import ModelStyles, Plot, SectionContext
from clip_robustness.plugins.html.rows import fmt, num


def shape_bias_plots(ctx: SectionContext) -> list[Plot]:
    """Per cue-conflict dataset, a row per class with each model's shape-bias marker and a line at its
    overall shape bias: the reader sees whether a model decides by shape or by texture, and which classes
    pull it towards texture."""
    rows = [r for r in ctx.rows if r["metric"] == "shape_bias"]
    plots = []
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == dataset]
        per_class = [r for r in mine if "class" in parse_condition(r["condition"])]
        if not per_class:
            continue
        classes = sorted({parse_condition(r["condition"])["class"] for r in per_class})
        plots.append(Plot(f"Shape vs texture decisions · {dataset}", _shape_plot(mine, per_class, classes, ctx.styles),
                          (6.4, 1.1 + 0.24 * len(classes)),
                          "Per class, one marker per model (model-vs-human style); vertical lines: the "
                          "model's overall shape bias (or its mean over classes)."))
    return plots


def _shape_plot(rows: list[dict[str, Any]], per_class: list[dict[str, Any]], classes: list[str],
                styles: ModelStyles) -> Callable[[Any], None]:
    """Per-class shape-bias markers per model, and a line at each model's overall (or mean) shape bias."""

    def fill(fig: Any) -> None:
        ax = fig.add_subplot()
        for model in styles.sort(r["model"] for r in per_class):
            mine = [r for r in per_class if r["model"] == model]
            x = [num(r["value"]) for r in mine]
            y = [classes.index(parse_condition(r["condition"])["class"]) for r in mine]
            overall = [r for r in rows if r["model"] == model and "class" not in parse_condition(r["condition"])]
            finite = [v for v in x if not math.isnan(v)]
            if overall:
                level = num(overall[0]["value"])
            else:
                level = float(np.mean(finite)) if finite else math.nan
            ax.scatter(x, y, marker=styles.marker(model), color=styles.color(model), s=26, zorder=3,
                       label=f"{model} ({'overall' if overall else 'mean'} {fmt(level, 3)})")
            if not math.isnan(level):
                ax.axvline(level, color=styles.color(model), ls="--", lw=0.9)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_ylim(len(classes) - 0.5, -0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("shape bias: fraction of shape decisions   (0 = texture, 1 = shape)")
        top = ax.secondary_xaxis("top", functions=(lambda v: 1 - v, lambda v: 1 - v))
        top.set_xlabel("fraction of texture decisions", fontsize=7.5)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fill
