"""The accuracy view: zero-shot top-1 per dataset and condition, one bar per model."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from clip_robustness.plugins.html.figures import Plot, SectionContext, cell_label, chunks, grouped_bars
from clip_robustness.plugins.html.rows import natural_key


def accuracy_plots(ctx: SectionContext) -> list[Plot]:
    """Top-1 bars per (dataset, condition), a bar per model with its Wilson CI: the reader sees how much
    accuracy each model keeps under each natural shift and template set, and which differences are
    larger than the sampling error."""
    rows = [r for r in ctx.rows if r["metric"] == "top1"]
    cells = {(cell_label(r, sep="\n"), r["model"]): r for r in rows}
    groups = sorted({g for g, _ in cells}, key=natural_key)
    models = ctx.styles.sort(r["model"] for r in rows)

    def draw(chunk: Sequence[str]) -> Callable[[Any], None]:
        return lambda fig: grouped_bars(fig.add_subplot(), chunk, cells, models, ctx.styles, "top1")

    return [Plot("Top-1 accuracy per dataset" + (f" ({i + 1})" if len(groups) > 10 else ""), draw(chunk),
                 (max(5.0, 0.9 + max(0.28 * len(models), 1.1) * len(chunk)), 3.2),
                 "Bars: top-1 accuracy; error bars: 95% CI (Wilson).")
            for i, chunk in enumerate(chunks(groups, 10))]
