"""The LMM view: a LLaVA-style LMM built on a CLIP tower against the CLIP alone, on the same two-option
questions, per split and per class, and where the LMM's gain is significant."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Sequence

from clip_robustness.fixtures.conditions import parse_condition
from clip_robustness.plugins.html.figures import (LEVEL_PALETTE, ModelStyles, Plot, SectionContext, chunks,
                                                  grouped_bars, panel_message)
from clip_robustness.plugins.html.rows import fmt_ci, natural_key, num

LMM_CLASSES_PER_PANEL = 12  # classes per per-class panel; more are chunked into further figures
LMM_HELP_HURT = 5  # cells named each way in "where the LMM helps or hurts"
_LMM_METRICS = ("clip_two_way_accuracy", "lmm_accuracy", "lmm_gain")
_CLIP_SERIES = "CLIP two-way"


class _SeriesStyles(ModelStyles):
    """Colours for bar series that are not models, so they are not read as one."""

    def color(self, model: str) -> str:
        return LEVEL_PALETTE[self.order.get(model, 0) % len(LEVEL_PALETTE)]


def _lmm_series(row: dict[str, Any]) -> str:
    if row["metric"] == "clip_two_way_accuracy":
        return _CLIP_SERIES
    return "LMM · " + parse_condition(row["condition"]).get("scoring", "?")


def _lmm_class(row: dict[str, Any]) -> str | None:
    return parse_condition(row["condition"]).get("class")


def _lmm_cell(row: dict[str, Any]) -> str:
    """Where a gain was measured: the split, its class if any, the scoring."""
    cond = parse_condition(row["condition"])
    return " · ".join([row["dataset"], *([f"class {cond['class']}"] if "class" in cond else []),
                       cond.get("scoring", "?")])


def lmm_help_hurt(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Among one (model, LMM) pair's rows (position-bias rows left out), the ``lmm_gain`` cells whose 95% CI
    excludes 0: (the largest gains first, the largest losses first)."""
    gains = [r for r in rows if r["metric"] == "lmm_gain" and r.get("ci") and None not in r["ci"]]
    helps = sorted((r for r in gains if r["ci"][0] > 0), key=lambda r: (-num(r["value"]), _lmm_cell(r)))
    hurts = sorted((r for r in gains if r["ci"][1] < 0), key=lambda r: (num(r["value"]), _lmm_cell(r)))
    return helps[:LMM_HELP_HURT], hurts[:LMM_HELP_HURT]


def _help_hurt_text(rows: Sequence[dict[str, Any]]) -> str:
    def listed(cells: list[dict[str, Any]]) -> str:
        return "; ".join(f"{_lmm_cell(r)} {num(r['value']):+.3f} {fmt_ci(r['ci'])}" for r in cells) or "none"

    helps, hurts = lmm_help_hurt(rows)
    return (f"Where the LMM helps (lmm_gain, 95% CI above 0; largest first): {listed(helps)}. "
            f"Where it hurts (CI below 0): {listed(hurts)}.")


def _lmm_bars(rows: list[dict[str, Any]], group_of: Callable[[dict[str, Any]], str],
              groups: Sequence[str]) -> Callable[[Any], None]:
    """Two-option accuracy bars per group (split or class): the CLIP, then the LMM per scoring; chance at 0.5."""
    cells = {(group_of(r), _lmm_series(r)): r for r in rows}
    series = sorted({s for _, s in cells}, key=lambda s: (s != _CLIP_SERIES, s))

    def fill(fig: Any) -> None:
        ax = fig.add_subplot()
        if not cells:  # the figure still carries the help/hurt caption
            panel_message(ax, "no per-split accuracy rows")
            return
        grouped_bars(ax, groups, cells, series, _SeriesStyles(series), "lmm_accuracy", ylabel="two-option accuracy")
        ax.axhline(0.5, color="#777777", lw=0.8, ls=":")  # chance with two options
    return fill


def lmm_plots(ctx: SectionContext) -> list[Plot]:
    """Per (CLIP model, LMM): LMM vs CLIP two-way accuracy per split, then per class (hardest classes
    first), with the cells where the LMM's gain is significant named in the caption: the reader sees
    whether wrapping the tower in an LMM helps or hurts, on which splits and on which classes the CLIP
    finds hard. The position-bias rows (``true_option=``) stay in the table."""
    pairs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in ctx.rows:
        cond = parse_condition(r["condition"])
        if r["metric"] in _LMM_METRICS and "true_option" not in cond:
            pairs[(r["model"], cond.get("lmm", "?"))].append(r)
    model_rank = {m: i for i, m in enumerate(ctx.styles.sort(m for m, _ in pairs))}
    split_plots, class_plots = [], []
    for (model, lmm), rows in sorted(pairs.items(), key=lambda kv: (model_rank[kv[0][0]], kv[0][1])):
        bars = [r for r in rows if r["metric"] != "lmm_gain"]
        per_split = [r for r in bars if _lmm_class(r) is None]
        datasets = sorted({r["dataset"] for r in per_split}, key=natural_key)
        n_series = len({_lmm_series(r) for r in per_split})
        split_plots.append(Plot(
            f"LMM vs CLIP per split · {model} · LMM {lmm}", _lmm_bars(per_split, lambda r: r["dataset"], datasets),
            (max(5.0, 0.9 + max(0.28 * n_series, 1.1) * len(datasets)), 3.2),
            "Accuracy on the two-option question (true class vs the CLIP's own distractor): the LMM per "
            "scoring, and the CLIP choosing between the same two options; error bars: 95% CI (Wilson); "
            "dotted line: chance. " + _help_hurt_text(rows)))
        by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in bars:
            if _lmm_class(r) is not None:
                by_dataset[r["dataset"]].append(r)
        for dataset, class_rows in by_dataset.items():
            clip = {_lmm_class(r): num(r["value"]) for r in class_rows if r["metric"] == "clip_two_way_accuracy"}
            clip = {c: v for c, v in clip.items() if not math.isnan(v)}
            # hardest for the CLIP first: the study asks whether the LMM helps on hard classes
            classes = sorted({_lmm_class(r) for r in class_rows}, key=lambda c: (clip.get(c, math.inf), c))
            parts = chunks(classes, LMM_CLASSES_PER_PANEL)
            n_series = len({_lmm_series(r) for r in class_rows})
            for i, chunk in enumerate(parts):
                part = f" ({i + 1}/{len(parts)})" if len(parts) > 1 else ""
                plot = Plot(f"LMM vs CLIP per class · {dataset} · {model} · LMM {lmm}{part}",
                            _lmm_bars([r for r in class_rows if _lmm_class(r) in chunk], _lmm_class, chunk),
                            (max(5.0, 0.9 + max(0.28 * n_series, 0.75) * len(chunk)), 3.2),
                            "Classes ordered by the CLIP's two-way accuracy, hardest first; error bars: 95% CI "
                            "(Wilson); dotted line: chance.")
                # each split's hardest classes before any split's next chunk (figures are capped)
                class_plots.append(((i, model_rank[model], lmm, natural_key(dataset)), plot))
    return split_plots + [plot for _, plot in sorted(class_plots, key=lambda kv: kv[0])]
