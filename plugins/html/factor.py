"""The visual-factor view: effective robustness, counterexample images found by the search, and top-1
per factor value (world interventions) or per annotated factor (ImageNet-X)."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable

from clip_robustness.fixtures.conditions import join_condition, parse_condition
from clip_robustness.plugins.html.figures import ModelStyles, Plot, SectionContext, cell_label, dot_plot, grouped_bars
from clip_robustness.plugins.html.rows import natural_key, num, primary_row

MAX_COUNTEREXAMPLE_MODELS = 6
COUNTEREXAMPLES_PER_MODEL = 3


def factor_plots(ctx: SectionContext) -> list[Plot]:
    """Effective robustness (accuracy above the fit over reference models), counterexample renders, then a
    bar chart per factor with a bar per value and model, charts ordered by spread: the reader sees which
    visual factor (pose, background, lighting...) a model depends on most, how far each value moves its
    accuracy from the canonical scenes, and a concrete minimal change that flips its prediction."""
    plots: list[Plot] = []
    er = [r for r in ctx.rows if r["metric"] == "effective_robustness"]
    if er:
        plots.append(Plot("Effective robustness", lambda fig: dot_plot(fig, er, ctx.styles, "effective robustness"),
                          (6.4, 0.9 + 0.22 * len({cell_label(r) for r in er})),
                          "Accuracy above the fit over reference models (0 = as robust as expected from ID accuracy)."))
    counterexamples = _counterexample_plot(ctx)
    if counterexamples is not None:
        plots.append(counterexamples)
    # world interventions (factor=F;value=V): one chart per factor, a bar per value, the canonical
    # renders (factor=canonical) first; ImageNet-X (factor=F, no value): one chart, a bar per factor
    found: dict[tuple[str, str], dict[tuple[str, str], list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    canonical: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in ctx.rows:
        cond = parse_condition(r["condition"])
        if r["metric"] != "top1" or "factor" not in cond:
            continue
        if "value" in cond:
            found[(r["dataset"], cond["factor"])][(cond["value"], r["model"])].append(r)
        elif cond["factor"] == "canonical":
            canonical[(r["dataset"], r["model"])].append(r)
        else:
            found[(r["dataset"], "")][(cond["factor"], r["model"])].append(r)
    for (dataset, factor), cells in found.items():
        for (ds, model), rs in canonical.items():
            if ds == dataset and factor:
                cells[("canonical", model)] = rs
    # one row per cell: the run's first template set (a model's other heads are in the table)
    factors = {key: {cell: primary_row(rs, ctx.run) for cell, rs in cells.items()} for key, cells in found.items()}

    def spread(cells: dict[tuple[str, str], dict[str, Any]]) -> float:
        values = [num(r["value"]) for r in cells.values() if not math.isnan(num(r["value"]))]
        return max(values) - min(values) if values else 0.0

    for (dataset, factor), cells in sorted(factors.items(), key=lambda kv: (-spread(kv[1]), kv[0])):
        groups = sorted({v for v, _ in cells}, key=lambda v: (v != "canonical", natural_key(v)))
        models = ctx.styles.sort(m for _, m in cells)
        what = f"value of {factor} (canonical: the unchanged scenes)" if factor else "annotated factor"
        plots.append(Plot(f"{factor or 'factors'} · {dataset}", _factor_bars(groups, cells, models, ctx.styles),
                          (max(4.5, 1.0 + 0.25 * len(groups) * len(models)), 2.7),
                          f"Top-1 accuracy per {what}; charts ordered by spread."))
    return plots


def _counterexample_plot(ctx: SectionContext) -> Plot | None:
    """Canonical and flipped renders of the counterexample search, a row per model: the minimal
    combined change first, then single factors."""
    rows = [r for r in ctx.rows if r["metric"] == "flip_rate" and (r.get("extra") or {}).get("counterexamples")]
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    models = ctx.styles.sort(by_model)[:MAX_COUNTEREXAMPLE_MODELS]
    if not models:
        return None

    def chosen(model: str) -> list[dict[str, Any]]:
        heads = {join_condition({k: v for k, v in parse_condition(r["condition"]).items() if k != "factor"})
                 for r in by_model[model]}
        head = primary_row([{"condition": h} for h in heads], ctx.run)["condition"]
        mine = [r for r in by_model[model]
                if join_condition({k: v for k, v in parse_condition(r["condition"]).items() if k != "factor"}) == head]
        mine.sort(key=lambda r: (parse_condition(r["condition"])["factor"] != "combined", r["condition"]))
        return mine[:COUNTEREXAMPLES_PER_MODEL]  # the first counterexample of each row

    picks = {m: chosen(m) for m in models}
    ncols = max(len(p) for p in picks.values())

    def fill(fig: Any) -> bool:
        axes = fig.subplots(len(models), 2 * ncols, squeeze=False)
        drawn = False
        for i, model in enumerate(models):
            for ax in axes[i]:
                ax.set_axis_off()
            for j, row in enumerate(picks[model]):
                data = ctx.samples(row, ("canonical_images", "flipped_images"), "counterexample images")
                if isinstance(data, str):
                    continue
                cx = row["extra"]["counterexamples"][0]
                factor = parse_condition(row["condition"])["factor"]
                left, right = axes[i][2 * j], axes[i][2 * j + 1]
                left.imshow(data["canonical_images"][0], interpolation="nearest")
                right.imshow(data["flipped_images"][0], interpolation="nearest")
                left.set_title(f"{model}\n{cx['label']} ✓" if j == 0 else f"{cx['label']} ✓", fontsize=7)
                right.set_title(f"{factor}: → {cx['flipped_prediction']}", fontsize=7)
                right.text(0.5, -0.04, "\n".join(cx["changes"]), transform=right.transAxes, ha="center", va="top",
                           fontsize=6.5)
                drawn = True
        return drawn

    return Plot("Counterexamples", fill, (1.6 * 2 * ncols, 2.0 * len(models)),
                "Left: a canonical scene the model classifies correctly; right: the smallest change the "
                "hypothesis search found that flips its prediction (combined factors first).")


def _factor_bars(groups: list[str], cells: dict[tuple[str, str], dict[str, Any]], models: list[str],
                 styles: ModelStyles) -> Callable[[Any], None]:
    return lambda fig: grouped_bars(fig.add_subplot(), groups, cells, models, styles, "top1")
