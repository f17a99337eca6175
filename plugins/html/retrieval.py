"""The retrieval view: Recall@K bars, image→text and text→image, per dataset and caption condition."""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Callable

from clip_robustness.plugins.html.figures import ModelStyles, Plot, SectionContext, grouped_bars
from clip_robustness.plugins.html.rows import badness

_RECALL = re.compile(r"(?:^|_)r(?:ecall)?@?(\d+)$", re.IGNORECASE)


def retrieval_plots(ctx: SectionContext) -> list[Plot]:
    """Per (dataset, condition), Recall@1/5/10 in both directions, a bar per model: the reader sees how
    often the right caption (or image) ranks first or in the top K, in which direction a model is weaker,
    and how much a caption perturbation or image corruption costs (clean captions first, then the worst)."""
    rows = [r for r in ctx.rows if _RECALL.search(r["metric"])]
    by_cell: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by_cell[(r["dataset"], r["condition"])][(r["metric"], r["model"])] = r

    def rank(item: tuple[tuple[str, str], dict[tuple[str, str], dict[str, Any]]]) -> tuple[Any, ...]:
        (dataset, condition), cells = item  # clean captions first, then the worst cells
        return condition != "", min(map(badness, cells.values())), dataset, condition

    plots = []
    for (dataset, condition), cells in sorted(by_cell.items(), key=rank):
        metrics = sorted({m for m, _ in cells}, key=lambda m: (m.split("_")[0], int(_RECALL.search(m)[1]), m))
        models = ctx.styles.sort(m for _, m in cells)
        label = dataset + (f" · {condition}" if condition else "")
        plots.append(Plot(f"Recall@K · {label}", _recall_bars(metrics, cells, models, ctx.styles),
                          (max(4.5, 1.0 + 0.22 * len(metrics) * len(models)), 2.7),
                          "Recall@1/5/10, image→text (i2t) and text→image (t2i); error bars: 95% CI."))
    return plots


def _recall_bars(metrics: list[str], cells: dict[tuple[str, str], dict[str, Any]], models: list[str],
                 styles: ModelStyles) -> Callable[[Any], None]:
    return lambda fig: grouped_bars(fig.add_subplot(), metrics, cells, models, styles, metrics[0], ylabel="recall")
