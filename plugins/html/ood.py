"""The OOD view: ROC curves and ID/OOD score histograms per (dataset, condition), worst separated first."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import numpy as np

from clip_robustness.plugins.html.figures import Plot, SectionContext
from clip_robustness.plugins.html.rows import badness, fmt

ROC_POINTS = 201  # ROC curves are drawn on at most this many FPR points
MAX_HIST_MODELS = 3  # score histograms per OOD figure (ROC shows all models)


def _roc_and_hist(ctx: SectionContext, cell: list[dict[str, Any]]) -> Callable[[Any], bool]:
    """ROC curves of a cell's models, then ID/OOD score densities of the first ``MAX_HIST_MODELS``."""
    from sklearn.metrics import roc_curve

    def fill(fig: Any) -> bool:
        curves = []
        for row in cell:
            data = ctx.samples(row, ("scores_in", "scores_out"), "ROC curve and score histogram")
            if isinstance(data, str):
                continue
            s_in, s_out = data["scores_in"].ravel(), data["scores_out"].ravel()  # (N,), (M,)
            y = np.r_[np.ones(s_in.size), np.zeros(s_out.size)]
            try:
                fpr, tpr, _ = roc_curve(y, np.r_[s_in, s_out])  # (K,), (K,) nondecreasing
            except ValueError as err:  # NaN scores, or one of the two sets empty
                ctx.bad_samples(row, err, "ROC curve and score histogram")
                continue
            if fpr.size > ROC_POINTS:  # a fixed grid keeps the SVG small for large N; staircase kept
                grid = np.linspace(0.0, 1.0, ROC_POINTS)
                fpr, tpr = grid, tpr[np.searchsorted(fpr, grid, side="right") - 1]
            curves.append((row, s_in, s_out, fpr, tpr))
        if not curves:
            return False
        axes = fig.subplots(1, 1 + min(len(curves), MAX_HIST_MODELS), squeeze=False)[0]
        roc = axes[0]
        for row, _, _, fpr, tpr in curves:
            roc.plot(fpr, tpr, color=ctx.styles.color(row["model"]), lw=1.2,
                     label=f"{row['model']} ({row['metric']} {fmt(row['value'], 3)})")
        roc.plot([0, 1], [0, 1], ls=":", color="#888888", lw=0.8)
        roc.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="FPR (OOD accepted)", ylabel="TPR (ID accepted)", title="ROC")
        roc.legend(loc="lower right", fontsize=6.5)
        for ax, (row, s_in, s_out, _, _) in zip(axes[1:], curves):
            edges = np.histogram_bin_edges(np.r_[s_in, s_out], bins=40)
            ax.hist(s_in, edges, density=True, histtype="stepfilled", alpha=0.55, color="#4c78a8", label="ID")
            ax.hist(s_out, edges, density=True, histtype="stepfilled", alpha=0.55, color="#e45756", label="OOD")
            ax.set(title=row["model"], xlabel="score (higher = more ID)", yticks=[])
            ax.legend(loc="upper left")
        return True

    return fill


def ood_plots(ctx: SectionContext) -> list[Plot]:
    """Per (ID set, OOD set and score): every model's ROC curve and, for the least separated models, the
    ID and OOD score densities: the reader sees how well each score tells unseen inputs from known ones,
    at which operating point a model lets OOD inputs through, and where the two score distributions overlap."""
    rows = [r for r in ctx.rows if r["metric"] == "auroc" and r.get("samples")]
    cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        cells[(r["dataset"], r["condition"])].append(r)
    plots = []
    for (dataset, cond), cell in sorted(cells.items(), key=lambda kv: (min(map(badness, kv[1])), kv[0])):
        cell = sorted(cell, key=badness)  # histograms for the worst-separated models
        n_hist = min(len(cell), MAX_HIST_MODELS)
        plots.append(Plot(f"{dataset} · {cond or 'clean'}", _roc_and_hist(ctx, cell), (2.9 * (1 + n_hist), 2.7),
                          "Left: ROC, in-distribution as positive. Right: score densities, ID vs OOD "
                          f"(the {n_hist} least separated models)."))
    return plots
