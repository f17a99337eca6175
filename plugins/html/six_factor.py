"""The six-factor view: each property's headline number against ID accuracy across models, coloured by the
model factor (architecture, training data, size, fine-tuning, loss...) that explains most of its spread,
and a table of means per factor level. Also the headline number a summary cell quotes (:func:`series_value`)."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Sequence

import numpy as np

from clip_robustness.fixtures.conditions import join_condition, parse_condition
from clip_robustness.fixtures.models import FACTOR_KEYS
from clip_robustness.plugins.html.figures import (FACTORS_VIEW, LEVEL_PALETTE, MAX_FIGURES, FigureRenderer,
                                                  ModelStyles, Plot)
from clip_robustness.plugins.html.rows import fmt, headline_metric, num, ordered_properties, primary_row

# Condition keys that split one measured cell into sub-cells (averaged in the six-factor view).
SUBCELL_KEYS = frozenset({"class", "corruption", "severity", "factor", "value"})
_MAX_POINT_LABELS = 8  # name the points of a six-factor scatter up to this many models


def id_dataset(rows: Sequence[dict[str, Any]]) -> str:
    """The in-distribution set: ``imagenet`` if measured, else ``world:test``."""
    names = {r["dataset"] for r in rows if r["metric"] == "top1"}
    return "imagenet" if "imagenet" in names else "world:test"


def id_accuracy(rows: Sequence[dict[str, Any]], run: dict[str, Any]) -> dict[str, float]:
    """Per model: top1 on the ID set (``imagenet`` if measured, else ``world:test``), clean cell."""
    dataset = id_dataset(rows)
    top1 = [r for r in rows if r["metric"] == "top1" and r["dataset"] == dataset
            and not SUBCELL_KEYS & parse_condition(r["condition"]).keys()]
    accuracy_rows = [r for r in top1 if r["property"] == "accuracy"] or top1
    out = {}
    for model in sorted({r["model"] for r in accuracy_rows}):
        best = primary_row([r for r in accuracy_rows if r["model"] == model], run)
        if best is not None and not math.isnan(num(best["value"])):
            out[model] = num(best["value"])
    return out


def series_value(rows: list[dict[str, Any]], run: dict[str, Any], common_sub: set[str] | None) -> float:
    """A model's headline number for one (property, metric, dataset): its primary condition, averaged
    over sub-cells (classes, corruptions, factor values) when the cell is split."""
    split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        cond = parse_condition(r["condition"])
        split[join_condition({k: v for k, v in cond.items() if k not in SUBCELL_KEYS})].append(r)
    best_main = primary_row([{"condition": c} for c in split], run)
    if best_main is None:
        return math.nan
    chosen = split[best_main["condition"]]
    whole = [r for r in chosen if not _sub_part(r)]
    if whole:  # the cell was measured as a whole (e.g. overall shape bias beside per-class rows)
        return num(whole[0]["value"])
    values = [num(r["value"]) for r in chosen if common_sub is None or _sub_part(r) in common_sub]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _sub_part(row: dict[str, Any]) -> str:
    return join_condition({k: v for k, v in parse_condition(row["condition"]).items() if k in SUBCELL_KEYS})


def factor_series(rows: Sequence[dict[str, Any]], run: dict[str, Any],
                  models: Sequence[str]) -> list[tuple[str, str, dict[str, float]]]:
    """``(label, metric, {model: value})`` per headline metric and dataset, excluding ID accuracy itself."""
    id_set = id_dataset(rows)
    by_prop: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["model"] in models:
            by_prop[r["property"]].append(r)
    series = []
    for prop in ordered_properties(by_prop):
        metric = headline_metric(prop, by_prop[prop])
        for dataset in sorted({r["dataset"] for r in by_prop[prop] if r["metric"] == metric}):
            if metric == "top1" and dataset == id_set and prop == "accuracy":
                continue  # the x axis
            cell = [r for r in by_prop[prop] if r["metric"] == metric and r["dataset"] == dataset]
            per_model = {m: [r for r in cell if r["model"] == m] for m in models}
            subs = [{_sub_part(r) for r in rs} for rs in per_model.values() if rs]
            common = set.intersection(*subs) if subs else set()
            values = {m: series_value(rs, run, common) for m, rs in per_model.items() if rs}
            values = {m: v for m, v in values.items() if not math.isnan(v)}
            if len(values) >= 2:
                series.append((f"{prop}: {metric} · {dataset}", metric, values))
    return series


def explaining_factor(values: dict[str, float], levels: dict[str, dict[str, str]], factors: Sequence[str]) -> str:
    """The factor whose levels explain most of the metric's variance across models (eta squared,
    between-level over total sum of squares); ties go to the first in ``FACTOR_KEYS`` order."""
    y = np.array(list(values.values()))
    total = float(np.sum((y - y.mean()) ** 2))

    def eta2(factor: str) -> float:
        groups: dict[str, list[float]] = defaultdict(list)
        for model, v in values.items():
            groups[levels[model].get(factor, "unknown")].append(v)
        between = sum(len(g) * (np.mean(g) - y.mean()) ** 2 for g in groups.values())
        return float(between / total) if total > 0 else 0.0

    return max(factors, key=lambda f: (round(eta2(f), 9), -list(factors).index(f)))


def _factor_scatter(values: dict[str, float], acc: dict[str, float], levels: dict[str, dict[str, str]],
                    factor: str, metric: str, styles: ModelStyles) -> Callable[[Any], None]:
    """The metric against ID top-1, a colour per level of ``factor``, a least-squares line per level."""

    def fill(fig: Any) -> None:
        ax = fig.add_subplot()
        models = [m for m in styles.sort(values) if m in acc]
        for k, level in enumerate(sorted({levels[m].get(factor, "unknown") for m in models})):
            group = [m for m in models if levels[m].get(factor, "unknown") == level]
            x = np.array([acc[m] for m in group])  # (G,)
            y = np.array([values[m] for m in group])  # (G,)
            color = LEVEL_PALETTE[k % len(LEVEL_PALETTE)]
            ax.scatter(x, y, color=color, s=26, label=level, zorder=3)
            if len(models) <= _MAX_POINT_LABELS:
                for model, xi, yi in zip(group, x, y):
                    ax.annotate(model, (xi, yi), xytext=(3, 3), textcoords="offset points", fontsize=6,
                                color="#444444")
            if len(group) >= 2 and np.ptp(x) > 0:
                slope, intercept = np.polyfit(x, y, 1)
                xs = np.array([x.min(), x.max()])
                ax.plot(xs, slope * xs + intercept, color=color, lw=1.0)
        ax.set_xlabel("ID top1")
        ax.set_ylabel(metric)
        ax.legend(title=factor.replace("_", " "), title_fontsize=7, fontsize=7, loc="best")
    return fill


def six_factor_view(rows: Sequence[dict[str, Any]], run: dict[str, Any], styles: ModelStyles,
                    renderer: FigureRenderer) -> dict[str, Any]:
    """Scatter plots of each headline metric against ID top-1, one point per model, coloured by the factor
    that explains most of the spread (least-squares line per level), and a table of the mean per factor
    level: the reader sees whether a robustness gap follows from accuracy alone ("on the line") or from
    how a model was built, and which design choice goes with a more robust model. Needs at least 2 models
    with metadata; otherwise the view holds a note saying so."""
    models_meta = {m: {k: str(v) for k, v in (info.get("metadata") or {}).items() if k in FACTOR_KEYS}
                   for m, info in (run.get("models") or {}).items()}
    acc = id_accuracy(rows, run)
    models = [m for m in styles.sort(models_meta) if m in acc]
    view: dict[str, Any] = {"figures": [], "table": None, "note": None, "id_dataset": id_dataset(rows)}
    if len(models) < 2:
        view["note"] = (f"The six-factor comparison needs at least 2 models with metadata and a top1 on "
                        f"{view['id_dataset']}; this run has {len(models)}.")
        return view
    factors = [f for f in FACTOR_KEYS if len({models_meta[m].get(f, "unknown") for m in models}) >= 2]
    series = factor_series(rows, run, models)
    if not factors:
        view["note"] = "All models share the same value of every factor: nothing to compare."
    for label, metric, values in series[:MAX_FIGURES] if factors else []:
        factor = explaining_factor(values, models_meta, factors)
        plot = Plot(label, _factor_scatter(values, acc, models_meta, factor, metric, styles), (3.4, 2.7),
                    f"Coloured by {factor.replace('_', ' ')}, the factor that explains most of the spread; "
                    "lines: least-squares fit per level with at least 2 models.")
        figure = renderer.render(plot, view=FACTORS_VIEW)
        if figure:
            view["figures"].append(figure)
    columns = [("ID top1", acc)] + [(label, values) for label, _, values in series]
    table_rows = []
    for factor in FACTOR_KEYS:
        for level in sorted({models_meta[m].get(factor, "unknown") for m in models}):
            group = [m for m in models if models_meta[m].get(factor, "unknown") == level]
            cells = []
            for _, values in columns:
                vals = [values[m] for m in group if m in values]
                cells.append(fmt(float(np.mean(vals)), 3) if vals else "—")
            table_rows.append({"factor": factor, "level": level, "n": len(group), "models": ", ".join(group),
                               "cells": cells})
    view["table"] = {"columns": [c for c, _ in columns], "rows": table_rows}
    return view
