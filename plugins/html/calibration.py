"""The calibration view: ECE against accuracy, and reliability diagrams before and after temperature
scaling, worst cells first."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable

import numpy as np

from clip_robustness.fixtures.conditions import parse_condition
from clip_robustness.plugins.html.figures import (MARKERS, ModelStyles, Plot, SectionContext, describe,
                                                  panel_message)
from clip_robustness.plugins.html.rows import badness, fmt, num, without
from clip_robustness.plugins.metrics import calibration_bins, softmax


def _scaling(row: dict[str, Any]) -> str:
    return parse_condition(row["condition"]).get("scaling", "none")


def _lookup_top1(ctx: SectionContext, row: dict[str, Any]) -> float:
    """Accuracy of a calibration cell: a top1 row of the same cell (scaling does not change argmax),
    else the argmax of its logits."""
    cond = without(row, "scaling")
    for other in ctx.all_rows:
        if (other["metric"] == "top1" and other["model"] == row["model"] and other["dataset"] == row["dataset"]
                and without(other, "scaling") == cond):
            return num(other["value"])
    rel = row.get("samples")
    data = ctx.store.load(rel) if rel else None
    if (isinstance(data, dict) and {"logits", "labels"} <= data.keys() and data["logits"].ndim == 2
            and data["labels"].shape == data["logits"].shape[:1]):
        return float(np.mean(data["logits"].argmax(1) == data["labels"]))
    return math.nan


def _reliability(ax: Any, logits: np.ndarray, labels: np.ndarray, title: str) -> None:
    """Reliability diagram: accuracy per confidence bin and its gap to the bin's confidence."""
    bins = calibration_bins(softmax(logits), labels, n_bins=15)
    edges, full = bins["edges"], bins["counts"] > 0  # (B+1,), (B,)
    left, width = edges[:-1][full], np.diff(edges)[full]
    acc, conf = bins["accuracy"][full], bins["confidence"][full]
    ax.bar(left, acc, width, align="edge", color="#4c78a8", edgecolor="white", linewidth=0.4, label="accuracy")
    ax.bar(left, conf - acc, width, bottom=acc, align="edge", color="#e45756", alpha=0.35, edgecolor="#e45756",
           linewidth=0.4, label="gap to confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="#444444", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)
    ax.legend(loc="upper left")


def calibration_plots(ctx: SectionContext) -> list[Plot]:
    """ECE vs accuracy (one point per model, dataset and condition), then one reliability diagram pair per
    cell, worst first: the reader sees whether a model's confidence matches its accuracy, in which
    confidence range it is over- or under-confident, and how much temperature scaling repairs. A note
    flags a temperature fitted on its search bound."""
    for r in ctx.rows:
        if r["metric"] == "temperature" and (r.get("extra") or {}).get("temperature_at_bound"):
            bounds = (r.get("extra") or {}).get("temperature_bounds") or "?"
            ctx.note(f"The temperature fitted for {describe(r)} lies on its search bound (T={fmt(r['value'], 4)}, "
                     f"bounds {bounds}): the NLL optimum is outside the range (a near-chance or perfectly "
                     "separable model), so its scaling=temperature numbers use the bound.")
    ece = [r for r in ctx.rows if r["metric"] == "ece"]
    plots: list[Plot] = []
    points = [(r, _lookup_top1(ctx, r)) for r in ece]
    points = [(r, acc) for r, acc in points if not math.isnan(acc) and not math.isnan(num(r["value"]))]
    if points:
        plots.append(Plot("ECE vs accuracy", lambda fig: _ece_scatter(fig, points, ctx.styles), (6.4, 3.4),
                          "One point per model, dataset and condition; hollow markers: after temperature scaling."))
    pairs: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in ece:
        pairs[(r["model"], r["dataset"], without(r, "scaling"))][_scaling(r)] = r
    ranked = sorted(pairs.items(), key=lambda kv: (min(badness(r) for r in kv[1].values()), kv[0]))

    def draw(cell: dict[str, dict[str, Any]]) -> Callable[[Any], bool]:
        def fill(fig: Any) -> bool:
            scalings = sorted(cell, key=lambda s: (s != "none", s))
            axes = fig.subplots(1, len(scalings), squeeze=False)[0]
            drawn = False
            for ax, scaling in zip(axes, scalings):
                row = cell[scaling]
                title = f"scaling={scaling}: ECE {fmt(row['value'], 3)}"
                data = ctx.samples(row, ("logits", "labels"), "reliability diagram")
                if not isinstance(data, str):
                    try:
                        _reliability(ax, data["logits"], data["labels"], title)
                        drawn = True
                        continue
                    except ValueError as err:  # readable file, unusable arrays (shapes, NaN): say so, go on
                        data = ctx.bad_samples(row, err, "reliability diagram")
                        ax.clear()
                panel_message(ax, "not drawn:\n" + data.replace("Per-sample file ", "per-sample file\n"))
                ax.set_title(title)
            return drawn
        return fill

    for (model, dataset, cond), cell in ranked:
        plots.append(Plot(f"Reliability: {model} · {dataset}" + (f" · {cond}" if cond else ""), draw(cell),
                          (3.3 * len(cell) + 0.2, 3.1),
                          "Before and after temperature scaling; 15 equal-width confidence bins."))
    return plots


def _ece_scatter(fig: Any, points: list[tuple[dict[str, Any], float]], styles: ModelStyles) -> None:
    """ECE against top-1, a colour per model, a marker per dataset, hollow after temperature scaling."""
    ax = fig.add_subplot()
    datasets = sorted({r["dataset"] for r, _ in points})
    seen: set[str] = set()
    for row, acc in points:
        model, hollow = row["model"], _scaling(row) not in ("none", "")
        color = styles.color(model)
        ax.scatter([acc], [num(row["value"])], s=28, marker=MARKERS[datasets.index(row["dataset"]) % len(MARKERS)],
                   facecolors="none" if hollow else color, edgecolors=color, linewidths=1.1,
                   label=None if model in seen else model)
        seen.add(model)
    for i, dataset in enumerate(datasets):  # marker legend for datasets
        ax.scatter([], [], marker=MARKERS[i % len(MARKERS)], color="#666666", label=dataset, s=20)
    ax.set(xlabel="top-1 accuracy", ylabel="ECE")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
