"""Regression against a baseline run: the same metric cell, recomputed on the same samples.

Every recorded row that has a counterpart in the ``--baseline`` report (same property, dataset,
condition and metric; the model matched by name or ``--baseline-model``) gets a paired comparison
in ``row["extra"]["comparison"]``: McNemar's exact test for top-1, a paired bootstrap of the metric
for the rest (ID and OOD items resampled apart for OOD metrics). A *regression gate* is applied where
a threshold rule gives a ``max_drop`` for the cell: it fails when the drop exceeds ``max_drop`` with
the whole 95% CI of the difference beyond it, and is inconclusive when only the point estimate is.
Gating only the cells a rule names keeps the run-level false-alarm rate under control: comparing
hundreds of cells at 5% each would flag noise somewhere in every run.
"""
from __future__ import annotations

import math
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from clip_robustness.plugins.config import Threshold
from clip_robustness.plugins.gates import FAIL, INCONCLUSIVE, PASS, describe_cell
from clip_robustness.plugins.metrics import CLASSIFICATION_SAMPLES, OOD_SAMPLES, metric_info
from clip_robustness.plugins.rows import load_report, row_key

ITEMS_DIGEST = "items_digest"  # row extra: which items (in order) the row's per-sample arrays cover


def items_digest(item_ids: Sequence[str]) -> str:
    """A short digest of item ids in order, stored as ``extra["items_digest"]`` beside per-sample arrays whose
    items carry no labels to check: :func:`compare` pairs two rows only when their digests agree (two runs
    with another ``--seed`` draw other world items of the same count, which a shape check cannot tell apart).

    >>> items_digest(["a", "b"]) == items_digest(["b", "a"])
    False
    """
    from clip_robustness.fixtures.cache import digest_strings

    return digest_strings(list(item_ids))[:16]


def _not_aligned(row: dict[str, Any], samples: dict[str, np.ndarray] | None, base_row: dict[str, Any],
                 base_samples: dict[str, np.ndarray] | None, keys: Sequence[str]) -> str | None:
    """Why the two rows' per-sample arrays cannot be paired item by item; None when they can."""
    if samples is None or base_samples is None or not all(k in samples and k in base_samples for k in keys):
        return "no aligned per-sample outputs"
    if any(samples[k].shape[0] != base_samples[k].shape[0] for k in keys):
        return "the per-sample arrays cover different numbers of items"
    if tuple(keys) == CLASSIFICATION_SAMPLES and not np.array_equal(samples["labels"], base_samples["labels"]):
        return "the labels differ, so the items do"
    digests = [(r.get("extra") or {}).get(ITEMS_DIGEST) for r in (row, base_row)]
    if any(digests) and digests[0] != digests[1]:
        return f"the two runs measured different items ({ITEMS_DIGEST} differs)"
    return None


@dataclass
class Baseline:
    """A parsed baseline report: rows indexed by cell, per-sample files read on demand."""

    path: Path
    rows: dict[tuple, dict[str, Any]]  # clip_robustness.plugins.rows.row_key -> the row's JSON object
    models: set[str]
    model_map: dict[str, str] = field(default_factory=dict)  # candidate id -> baseline id

    @classmethod
    def load(cls, path: Path, model_map: dict[str, str]) -> "Baseline":
        """The report at ``path``, read by clip_robustness.plugins.rows.load_report (checked at start by
        clip_robustness.plugins.config, so a bad file never gets here)."""
        rows = [r.to_json() for r in load_report(path).rows]
        return cls(Path(path), {row_key(r): r for r in rows}, {r["model"] for r in rows}, model_map)

    def counterpart(self, row: dict[str, Any], *, templates: str = "openai") -> dict[str, Any] | None:
        """The baseline's cell for ``row``. A fine-tuned linear head (condition ``head=linear``) is
        compared with the baseline's zero-shot head under the run's first template set when the
        baseline has no linear head: the fine-tune scenario (a label-fine-tuned child vs its parent)."""
        model = self.model_map.get(row["model"], row["model"])
        found = self.rows.get(row_key({**row, "model": model}))
        if found is None and "head=linear" in row["condition"]:
            from clip_robustness.fixtures.conditions import condition, parse_condition

            parts = parse_condition(row["condition"])
            del parts["head"]
            zero_shot = condition(**parts, templates=templates)
            found = self.rows.get(row_key({**row, "model": model, "condition": zero_shot}))
        return found

    def samples(self, row: dict[str, Any]) -> dict[str, np.ndarray] | None:
        """The baseline cell's per-sample arrays; None when it has none, or its file is missing or
        unreadable (the comparison then falls back to an unpaired one and says why, see :func:`compare`)."""
        if not row.get("samples"):
            return None
        path = self.path.parent / row["samples"]
        try:
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None


def expanded_confidence(n: int, confidence: float = 0.95) -> float:
    """The percentile level that gives a paired bootstrap over ``n`` items about ``confidence`` coverage:
    Hesterberg's expanded percentile interval, ``z = sqrt(n / (n - 1)) * t(n - 1)`` at the nominal level. The
    plain percentile interval is too narrow with few items (its spread is the plug-in one, and normal rather
    than t): about 92% coverage for a multiview cell's 16 scenes, where an unchanged model's null redraws were
    flagged 15 times in 200; at 1000 items the level moves from 0.95 to 0.9504.

    >>> round(expanded_confidence(16), 4), round(expanded_confidence(1000), 4)
    (0.9723, 0.9504)
    """
    from scipy import stats

    if n < 2:
        return confidence
    z = math.sqrt(n / (n - 1)) * stats.t.ppf(0.5 + confidence / 2, n - 1)
    return float(2 * stats.norm.cdf(z) - 1)


def paired_two_group_delta(statistic: Callable[[np.ndarray, np.ndarray], float],
                           cand: tuple[np.ndarray, np.ndarray], base: tuple[np.ndarray, np.ndarray], *,
                           n_resamples: int = 1000, seed: int = 0,
                           higher_is_better: bool = True) -> tuple[float, tuple[float, float], float]:
    """Paired bootstrap of ``statistic(a, b)`` (candidate minus baseline) for two-group metrics.

    ID items and OOD items are resampled apart (stratified, as for the metric's own CI) and the same
    indices go to candidate and baseline. Written here because ``scipy.stats.bootstrap`` pairs one
    item axis only. A statistic with a batched form (AUROC, FPR@TPR, AUPR) is evaluated on all
    resamples at once, from the same indices. Returns ``(delta, (lo, hi), one-sided p-value for a drop)``.
    """
    from clip_robustness.plugins.metrics import UndefinedMetricWarning
    from clip_robustness.plugins.stats import MAX_BATCH_ENTRIES, batched_statistic, too_few_to_resample

    rng = np.random.default_rng(seed)
    n_a, n_b = len(cand[0]), len(cand[1])
    delta = statistic(*cand) - statistic(*base)
    if too_few_to_resample(n_a, n_b):  # a group of one item has no spread: no interval, as for the cell's own CI
        warnings.warn(too_few_to_resample(n_a, n_b), UndefinedMetricWarning, stacklevel=2)
        return float(delta), (math.nan, math.nan), math.nan
    of_cand, of_base = (batched_statistic(statistic, arrays, samples=2) for arrays in (cand, base))
    chunk = max(1, MAX_BATCH_ENTRIES // max(n_a + n_b, 1)) if of_cand and of_base else 1
    deltas = []
    for start in range(0, n_resamples, chunk):
        # drawn in the order of a per-resample loop, so the indices do not depend on the chunking
        draws = [(rng.integers(0, n_a, n_a), rng.integers(0, n_b, n_b)) for _ in range(min(chunk, n_resamples - start))]
        ia, ib = (np.stack(d) for d in zip(*draws))  # (R, n_a), (R, n_b)
        if of_cand and of_base:
            deltas.append(of_cand(ia, ib) - of_base(ia, ib))  # (R,)
        else:
            deltas.append([statistic(cand[0][a], cand[1][b]) - statistic(base[0][a], base[1][b])
                           for a, b in zip(ia, ib)])
    deltas = np.concatenate(deltas)  # (n_resamples,)
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    not_worse = deltas >= 0 if higher_is_better else deltas <= 0
    return float(delta), (float(lo), float(hi)), (1 + int(not_worse.sum())) / (1 + n_resamples)


def compare(row: dict[str, Any], samples: dict[str, np.ndarray] | None, base_row: dict[str, Any],
            base_samples: dict[str, np.ndarray] | None, *, seed: int) -> dict[str, Any]:
    """Paired comparison of one cell: delta (candidate - baseline), its 95% CI and a one-sided p-value."""
    from clip_robustness.plugins.stats import mcnemar_test, paired_bootstrap_delta

    higher = bool(row["higher_is_better"])
    out: dict[str, Any] = {"baseline_model": base_row["model"], "baseline_value": base_row["value"],
                           "value": row["value"]}
    recipe = metric_info(row["metric"]).recompute  # declared beside the metric (clip_robustness.plugins.metrics)
    why = "no aligned per-sample outputs" if recipe is None else \
        _not_aligned(row, samples, base_row, base_samples, recipe[0])
    if why is not None:
        # No aligned per-sample outputs: compare the two values with their CIs as independent estimates.
        delta = row["value"] - base_row["value"]
        se = [(c[1] - c[0]) / (2 * 1.96) for c in (row.get("ci"), base_row.get("ci")) if c and None not in c]
        half = 1.96 * math.sqrt(sum(s * s for s in se)) if len(se) == 2 else math.nan
        if base_row.get("samples") and base_samples is None:
            why = f"the baseline's per-sample file {base_row['samples']} is missing or unreadable"
        out.update(method=f"unpaired ({why})", delta=delta, ci=[delta - half, delta + half], p_value=None)
        return out
    keys, statistic = recipe
    cand, base = tuple(samples[k] for k in keys), tuple(base_samples[k] for k in keys)
    level = expanded_confidence(len(cand[0]))  # a 95% interval also over a few items (a multiview cell's scenes)
    if row["metric"] == "top1":
        correct_c, correct_b = cand[0].argmax(1) == cand[1], base[0].argmax(1) == base[1]
        delta, p = mcnemar_test(correct_c, correct_b, alternative="less")
        _, ci, _ = paired_bootstrap_delta(np.mean, (correct_c,), (correct_b,), seed=seed, confidence=level)
        out.update(method="McNemar exact (p) + paired bootstrap (CI)", delta=delta, ci=list(ci), p_value=p)
    elif keys == OOD_SAMPLES:  # ID and OOD groups of hundreds of items each: the plain percentile interval
        delta, ci, p = paired_two_group_delta(statistic, cand, base, seed=seed, higher_is_better=higher)
        out.update(method="paired stratified bootstrap", delta=delta, ci=list(ci), p_value=p)
    else:
        delta, ci, p = paired_bootstrap_delta(statistic, cand, base, seed=seed, higher_is_better=higher,
                                              confidence=level)
        out.update(method="paired bootstrap", delta=delta, ci=list(ci), p_value=p)
    return out


def undefined_comparison(row: dict[str, Any], base_row: dict[str, Any]) -> dict[str, Any]:
    """The comparison of a cell that is undefined in this run but defined in the baseline."""
    why = (row.get("extra") or {}).get("undefined") or "non-finite value"
    return {"baseline_model": base_row["model"], "baseline_value": base_row["value"], "value": None,
            "delta": None, "ci": None, "p_value": None, "undefined": why,
            "method": f"not compared: undefined in this run ({why})"}


def regression_verdict(row: dict[str, Any], comparison: dict[str, Any], rule: Threshold) -> dict[str, Any]:
    """Gate a comparison with the rule's ``max_drop`` (in metric units, in the metric's bad direction)."""
    if comparison["delta"] is None:  # a regression gate that cannot be checked fails, with the reason
        message = (f"{row['metric']} is undefined {describe_cell(row)} ({comparison['undefined']}) "
                   f"while the baseline {comparison['baseline_model']} has {comparison['baseline_value']:.4g}, so "
                   f"its drop cannot be checked against the tolerance {float(rule.max_drop):.4g}.")
        return {"kind": "regression", "verdict": FAIL, "max_drop": float(rule.max_drop), "message": message,
                "rule": rule.origin, **{k: comparison[k] for k in
                                        ("baseline_model", "baseline_value", "delta", "ci", "p_value", "method")}}
    sign = 1.0 if row["higher_is_better"] else -1.0
    drop = -sign * comparison["delta"]  # > 0 means worse
    lo, hi = comparison["ci"]
    drops = sorted((-sign * lo, -sign * hi))  # CI of the drop
    tol = float(rule.max_drop)
    no_interval = any(math.isnan(x) for x in drops)  # e.g. one item to resample: the point alone shows no safety
    if math.isnan(drop):  # a change that cannot be computed never passes a regression gate
        verdict = FAIL
    elif no_interval:
        verdict = FAIL if drop > tol else INCONCLUSIVE
    else:
        verdict = FAIL if drops[0] > tol else INCONCLUSIVE if drop > tol else PASS
    p = comparison.get("p_value")
    p_text = f", p={p:.3g}" if p is not None and not math.isnan(p) else ""
    interval = "no CI" if no_interval else f"95% CI {lo:+.4g}…{hi:+.4g}"
    change = f"{row['metric']} {comparison['baseline_value']:.4g} -> {row['value']:.4g} " \
             f"(Δ={comparison['delta']:+.4g}, {interval}{p_text}) vs baseline {comparison['baseline_model']}"
    if verdict == FAIL:
        message = f"{change} drops by more than the tolerance {tol:.4g} {describe_cell(row)}."
    elif no_interval:
        message = (f"{change} has no confidence interval {describe_cell(row)} (too few items to resample), so "
                   f"staying within the tolerance {tol:.4g} cannot be shown.")
    elif verdict == INCONCLUSIVE:
        message = f"{change} may drop by more than the tolerance {tol:.4g} {describe_cell(row)}: the CI cannot tell."
    else:
        message = f"{change} stays within the tolerance {tol:.4g} {describe_cell(row)}."
    if rule.reason:
        message += f" ({rule.reason})"
    return {"kind": "regression", "verdict": verdict, "max_drop": tol, "message": message, "rule": rule.origin,
            **{k: comparison[k] for k in ("baseline_model", "baseline_value", "delta", "ci", "p_value", "method")}}
