"""Regression against a baseline run: the same metric cell, recomputed on the same samples.

Every recorded row that has a counterpart in the ``--baseline`` report (same property, dataset,
condition and metric; the model matched by name or ``--baseline-model``) gets a paired comparison
in ``row["extra"]["comparison"]``: McNemar's exact test for top-1, a paired bootstrap of the metric
for the rest (ID and OOD items resampled apart for OOD metrics). A *regression gate* is applied where
a threshold rule gives a ``max_drop`` for the cell: it fails when the drop exceeds ``max_drop`` with
the whole 95% CI of the difference beyond it, passes only when the whole CI stays within it (a
non-inferiority test, as the bound gates pass only when the whole CI clears the bound), and is
inconclusive otherwise. A pairing needs the same items: a baseline per-sample file whose arrays do not
hash to its name or do not give its row's value, and a baseline run with another ``--seed``, ``--limit``
or ``--data`` path, are compared unpaired, saying why. Gating only the cells a rule names keeps the run-level false-alarm rate under control: comparing
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

from clip_robustness.plugins.config import Threshold, load_baseline, template_file_digests
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
    """A parsed baseline report: rows indexed by cell, per-sample files read (and checked) on demand."""

    path: Path
    rows: dict[tuple, dict[str, Any]]  # clip_robustness.plugins.rows.row_key -> the row's JSON object
    models: set[str]
    model_map: dict[str, str] = field(default_factory=dict)  # candidate id -> baseline id
    config: dict[str, Any] = field(default_factory=dict)  # the baseline's run.config
    _checked: dict[str, tuple[dict[str, np.ndarray] | None, str | None]] = field(default_factory=dict, repr=False)

    _changed: dict[tuple[str, ...], dict[str, str]] = field(default_factory=dict, repr=False)

    def templates_changed(self, templates: Sequence[str]) -> dict[str, str]:
        """:func:`templates_changed` against this baseline, computed once per template list (it reads the files)."""
        key = tuple(templates)
        if key not in self._changed:
            self._changed[key] = templates_changed(self.config, key)
        return self._changed[key]

    @classmethod
    def load(cls, path: Path, model_map: dict[str, str]) -> "Baseline":
        """The report at ``path``, read by clip_robustness.plugins.rows.load_report (checked at start by
        clip_robustness.plugins.config, so a bad file never gets here)."""
        report = load_baseline(path)
        rows = [r.to_json() for r in report.rows]
        config = report.run.get("config")
        return cls(Path(path), {row_key(r): r for r in rows}, {r["model"] for r in rows}, model_map,
                   dict(config) if isinstance(config, dict) else {})

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
        """The baseline cell's per-sample arrays; None when it has none, or its file is missing, unreadable or
        does not match its row (the comparison then falls back to an unpaired one and says why, see
        :meth:`checked_samples` and :func:`compare`)."""
        return self.checked_samples(row)[0]

    def checked_samples(self, row: dict[str, Any]) -> tuple[dict[str, np.ndarray] | None, str | None]:
        """(the baseline cell's per-sample arrays, None) when its file is there and matches its row; (None, why)
        when it is missing, unreadable, or its arrays do not hash to the file's name (the name
        clip_robustness.plugins.report.save_samples gave them) or do not give the row's value (the metric's
        ``recompute``): a file overwritten or copied from another run would pair the candidate with other
        outputs. (None, None) for a row without a per-sample file."""
        rel = row.get("samples")
        if not rel:
            return None, None
        key = f"{rel}\0{row_key(row)}"
        if key not in self._checked:
            self._checked[key] = self._read_checked(row, rel)
        return self._checked[key]

    def _read_checked(self, row: dict[str, Any], rel: str) -> tuple[dict[str, np.ndarray] | None, str | None]:
        try:
            with open(self.path.parent / rel, "rb") as handle, np.load(handle, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None, f"the baseline's per-sample file {rel} is missing or unreadable"
        why = sample_file_mismatch(row, rel, arrays)
        return (None, f"the baseline's per-sample file {rel} does not match its row: {why}") if why else (arrays, None)

    def items_differ(self, run: Any) -> str | None:
        """Why no cell of this baseline can be paired with a cell of ``run`` (clip_robustness.plugins.config
        .RunConfig): the baseline's run.config records another ``--seed``, ``--limit`` or path of a ``--data``
        set both runs measured, so its items differ (rows of world cells with no labels or items digest could
        not show it). None when they agree, or the baseline does not record them."""
        return items_differ(self.config, run)


def sample_file_mismatch(row: dict[str, Any], rel: str, arrays: dict[str, np.ndarray]) -> str | None:
    """Why a per-sample file's ``arrays`` are not the ones its ``row`` was computed from; None when they are:
    their content digest (clip_robustness.plugins.stats.named_arrays_digest, which names the file) must be the
    file's name, and where the metric has a ``recompute`` the arrays must give the row's value."""
    from clip_robustness.plugins.stats import named_arrays_digest

    name = Path(rel).stem
    try:
        digest = named_arrays_digest(arrays)
    except (TypeError, ValueError):
        digest = None
    if digest is None or digest[:len(name)] != name or len(name) < 8:
        return f"its arrays hash to {(digest or 'nothing stable')[:20]}, not to its name {name}"
    try:
        recipe = metric_info(row["metric"]).recompute
    except (KeyError, ValueError):
        recipe = None
    value = row.get("value")
    if recipe is None or value is None or not all(k in arrays for k in recipe[0]):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = float(recipe[1](*(arrays[k] for k in recipe[0])))
    except Exception as err:  # noqa: BLE001 - arrays that cannot give the metric are a mismatch, not a traceback
        return f"its arrays do not give {row['metric']} ({type(err).__name__}: {err})"
    if not math.isclose(got, float(value), rel_tol=1e-6, abs_tol=1e-7):
        return f"its arrays give {row['metric']} {got:.4g}, the row says {float(value):.4g}"
    return None


def _config_value(run: Any, key: str) -> Any:
    value = run.get(key) if isinstance(run, dict) else getattr(run, key, None)
    if key == "data":
        return {str(k): str(v) for k, v in (value or {}).items()}
    return value


def items_differ(base_config: dict[str, Any], run: Any) -> str | None:
    """Why the items of a baseline run (its ``run.config``) differ from ``run``'s (a RunConfig or its JSON):
    another ``--seed`` or ``--limit`` draws other (or fewer) items, another path for a ``--data`` set both
    measured reads other images. None when they agree or the baseline does not record them.

    >>> items_differ({"seed": 1, "limit": 100}, {"seed": 0, "limit": 100})
    'the baseline was run with --seed 1, this run with 0, so its items differ'
    >>> items_differ({"seed": 0}, {"seed": 0, "limit": 50}) is None
    True
    """
    for key in ("seed", "limit"):
        if key in base_config and base_config[key] != _config_value(run, key):
            shown = ["none" if v is None else v for v in (base_config[key], _config_value(run, key))]
            return f"the baseline was run with --{key} {shown[0]}, this run with {shown[1]}, so its items differ"
    if isinstance(base_config.get("data"), dict):
        base_data, data = _config_value(base_config, "data"), _config_value(run, "data")
        for name in sorted(set(base_data) & set(data)):
            if base_data[name] != data[name]:
                return (f"the baseline was run with --data {name}={base_data[name]}, this run with "
                        f"{name}={data[name]}, so its items differ")
    return None


def templates_changed(base_config: dict[str, Any], templates: Sequence[str]) -> dict[str, str]:
    """name -> why, for each template file this run and the baseline (its ``run.config``) name alike
    (``templates=NAME``) whose contents differ: those cells measured other prompts, so they are not compared."""
    theirs = base_config.get("template_files")
    if not isinstance(theirs, dict):
        return {}  # a baseline written before the digests were recorded
    ours = template_file_digests(templates)
    return {label: f"its template file {label} held other templates (sha256 {str(theirs[label])[:12]}) than "
                   f"this run's (sha256 {ours[label][:12]})"
            for label in sorted(set(ours) & set(theirs)) if ours[label] != theirs[label]}


def baseline_warnings(config: Any) -> list[str]:
    """Start-up warnings about the --baseline (one line each): a baseline run over other items (another
    --seed, --limit or --data path), whose cells are all compared unpaired."""
    if config.baseline is None:
        return []
    run = load_baseline(config.baseline).run.get("config")
    why = items_differ(run, config) if isinstance(run, dict) else None
    lines = [] if why is None else [
        f"--baseline {config.baseline}: {why}; no cell is paired with it, each is compared unpaired from the two "
        "rows' values and CIs (wider), so re-run the baseline with this run's options for paired tests"]
    changed = templates_changed(run, config.templates) if isinstance(run, dict) else {}
    return lines + [f"--baseline {config.baseline}: {why}, so its cells under templates={label} are not compared "
                    "with this run's; name the new file differently, or re-run the baseline with it"
                    for label, why in changed.items()]


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
            base_samples: dict[str, np.ndarray] | None, *, seed: int, unpaired: str | None = None) -> dict[str, Any]:
    """Paired comparison of one cell: delta (candidate - baseline), its 95% CI and a one-sided p-value.
    ``unpaired`` is a reason the two cells cannot be paired that their arrays cannot show (the baseline's
    per-sample file does not match its row, or its run drew other items): the comparison is then unpaired."""
    from clip_robustness.plugins.stats import mcnemar_test, paired_bootstrap_delta

    higher = bool(row["higher_is_better"])
    out: dict[str, Any] = {"baseline_model": base_row["model"], "baseline_value": base_row["value"],
                           "value": row["value"]}
    recipe = metric_info(row["metric"]).recompute  # declared beside the metric (clip_robustness.plugins.metrics)
    why = unpaired or ("no aligned per-sample outputs" if recipe is None else
                       _not_aligned(row, samples, base_row, base_samples, recipe[0]))
    if why is not None:
        # No aligned per-sample outputs: compare the two values with their CIs as independent estimates.
        delta = row["value"] - base_row["value"]
        se = [(c[1] - c[0]) / (2 * 1.96) for c in (row.get("ci"), base_row.get("ci")) if c and None not in c]
        half = 1.96 * math.sqrt(sum(s * s for s in se)) if len(se) == 2 else math.nan
        if unpaired is None and base_row.get("samples") and base_samples is None:
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


def compare_with_baseline(row: dict[str, Any], samples: dict[str, np.ndarray] | None, baseline: Baseline,
                          run: Any, *, templates: str, seed: int) -> dict[str, Any] | None:
    """The comparison of ``row`` with its counterpart cell in ``baseline``; None when it has none. ``run`` is this
    run's clip_robustness.plugins.config.RunConfig: a baseline of other items (:meth:`Baseline.items_differ`) and
    a baseline per-sample file that does not match its row are compared unpaired; a cell undefined on either
    side gets a comparison without a delta, which fails a max_drop gate (:func:`regression_verdict`)."""
    base_row = baseline.counterpart(row, templates=templates)
    if base_row is None:
        return None
    from clip_robustness.fixtures.conditions import parse_condition

    if run is not None and parse_condition(row["condition"]).get("templates") in baseline.templates_changed(
            _config_value(run, "templates") or ()):
        return None  # other prompts under one name: no counterpart (baseline_warnings says so at start)
    if row["value"] is None or base_row.get("value") is None:  # a max_drop gate must fail, not skip
        return undefined_comparison(row, base_row)
    base_samples, why = baseline.checked_samples(base_row)
    items = baseline.items_differ(run) if run is not None else None
    return compare(row, samples, base_row, base_samples, seed=seed, unpaired=items or why)


def _undefined_why(row: dict[str, Any]) -> str:
    return (row.get("extra") or {}).get("undefined") or "non-finite value"


def undefined_comparison(row: dict[str, Any], base_row: dict[str, Any]) -> dict[str, Any]:
    """The comparison of a cell that is undefined in this run, in the baseline, or in both."""
    here, there = row.get("value") is None, base_row.get("value") is None
    sides = [f"in this run ({_undefined_why(row)})"] * here + [f"in the baseline ({_undefined_why(base_row)})"] * there
    out = {"baseline_model": base_row["model"], "baseline_value": base_row.get("value"), "value": row.get("value"),
           "delta": None, "ci": None, "p_value": None, "undefined": _undefined_why(row if here else base_row),
           "method": f"not compared: undefined {' and '.join(sides)}"}
    if there:
        out["baseline_undefined"] = _undefined_why(base_row)
    return out


def _direction(row: dict[str, Any]) -> tuple[str, str]:
    """(the verb, its noun) for the metric moving in its bad direction: a top-1 drops, an ECE or FPR95 rises."""
    return ("drops", "drop") if row["higher_is_better"] else ("rises", "rise")


def regression_verdict(row: dict[str, Any], comparison: dict[str, Any], rule: Threshold) -> dict[str, Any]:
    """Gate a comparison with the rule's ``max_drop`` (in metric units, in the metric's bad direction): a
    non-inferiority test on the CI of the change, as a bound gate on the CI of the value. It passes when the
    whole CI of the worsening stays within the tolerance, fails when the whole CI exceeds it, and is
    inconclusive when the CI reaches over it; a change with no CI fails when its point worsening exceeds the
    tolerance and is inconclusive otherwise; a change that cannot be computed fails."""
    verb, noun = _direction(row)
    tol = float(rule.max_drop)
    keep = ("baseline_model", "baseline_value", "delta", "ci", "p_value", "method")
    if comparison["delta"] is None:  # a regression gate that cannot be checked fails, with the reason
        if "baseline_undefined" in comparison and row.get("value") is not None:
            message = (f"{row['metric']} {row['value']:.4g} {describe_cell(row)} cannot be checked against the "
                       f"tolerance {tol:.4g}: the baseline {comparison['baseline_model']}'s value is undefined "
                       f"({comparison['baseline_undefined']}), so there is nothing to measure its {noun} from.")
        elif "baseline_undefined" in comparison:
            message = (f"{row['metric']} is undefined {describe_cell(row)} ({comparison['undefined']}) and so is the "
                       f"baseline {comparison['baseline_model']}'s value ({comparison['baseline_undefined']}), so its "
                       f"{noun} cannot be checked against the tolerance {tol:.4g}.")
        else:
            message = (f"{row['metric']} is undefined {describe_cell(row)} ({comparison['undefined']}) "
                       f"while the baseline {comparison['baseline_model']} has {comparison['baseline_value']:.4g}, so "
                       f"its {noun} cannot be checked against the tolerance {tol:.4g}.")
        if rule.reason:
            message += f" ({rule.reason})"
        return {"kind": "regression", "verdict": FAIL, "max_drop": tol, "message": message,
                "rule": rule.origin, **{k: comparison.get(k) for k in keep}}
    sign = 1.0 if row["higher_is_better"] else -1.0
    drop = -sign * comparison["delta"]  # > 0 means worse
    lo, hi = comparison["ci"]
    drops = sorted((-sign * lo, -sign * hi))  # CI of the worsening
    no_interval = any(math.isnan(x) for x in drops)  # e.g. one item to resample: the point alone shows no safety
    if math.isnan(drop):  # a change that cannot be computed never passes a regression gate
        verdict = FAIL
    elif no_interval:
        verdict = FAIL if drop > tol else INCONCLUSIVE
    else:  # non-inferiority: the whole CI of the worsening within the tolerance passes, the whole CI beyond fails
        verdict = FAIL if drops[0] > tol else PASS if drops[1] <= tol else INCONCLUSIVE
    p = comparison.get("p_value")
    p_text = f", p={p:.3g}" if p is not None and not math.isnan(p) else ""
    interval = "no CI" if no_interval else f"95% CI {lo:+.4g}…{hi:+.4g}"
    change = f"{row['metric']} {comparison['baseline_value']:.4g} -> {row['value']:.4g} " \
             f"(Δ={comparison['delta']:+.4g}, {interval}{p_text}) vs baseline {comparison['baseline_model']}"
    if verdict == FAIL:
        message = f"{change} {verb} by more than the tolerance {tol:.4g} {describe_cell(row)}."
    elif no_interval:
        message = (f"{change} has no confidence interval {describe_cell(row)} (too few items to resample), so "
                   f"staying within the tolerance {tol:.4g} cannot be shown.")
    elif verdict == INCONCLUSIVE:
        message = (f"{change} may {verb[:-1]} by more than the tolerance {tol:.4g} {describe_cell(row)}: the CI "
                   f"reaches a {noun} of {drops[1]:.4g}, so the CI cannot tell.")
    else:
        message = f"{change} stays within the tolerance {tol:.4g} {describe_cell(row)} over its whole CI."
    if comparison.get("method", "").startswith("unpaired"):
        message += f" Compared {comparison['method']}."
    if rule.reason:
        message += f" ({rule.reason})"
    return {"kind": "regression", "verdict": verdict, "max_drop": tol, "message": message, "rule": rule.origin,
            **{k: comparison[k] for k in keep}}
