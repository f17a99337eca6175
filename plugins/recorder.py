"""The ``record`` fixture's object: builds a typed report row, checks it, gates it and hands it on.

Like pytest-benchmark's ``BenchmarkFixture``, the :class:`Recorder` is handed its output channel by the
fixture (clip_robustness.fixtures.pytest_fixtures.record): ``gate(row, samples)`` attaches the verdicts
(and the baseline comparison), ``sink(row)`` ships the finished row to the report. It reads no pytest state
itself, so the path from a test to a row is one way: fixture -> Recorder -> sink -> report session.
The pytest side of that channel (:func:`gate_row`, :func:`ship_row`) is below the class.
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from clip_robustness.plugins.rows import Row, row_problems
from clip_robustness.plugins.state import GATE_FAILURES, RB_CONFIG

Samples = dict[str, np.ndarray]


def _undefined_reason(compute: Callable[[], Any]) -> tuple[Any, str | None]:
    """``compute()`` and the text of the first UndefinedMetricWarning it raised (why a value or interval is
    nan): the row records that reason instead of a number, so the warning neither prints nor fails the
    test under ``filterwarnings = error``. Other warnings are re-emitted unchanged."""
    from clip_robustness.plugins.metrics import UndefinedMetricWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        result = compute()
    reasons = [str(w.message) for w in caught if issubclass(w.category, UndefinedMetricWarning)]
    for w in caught:
        if not issubclass(w.category, UndefinedMetricWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return result, (reasons[0] if reasons else None)


class _NotStored(Exception):
    """An interval with a non-finite end: returned, never stored (the cache refuses non-finite entries,
    and its undefined-reason warning must be raised again on the next run)."""


def _cached_interval(cache: Any, parts: dict[str, Any] | None,
                     interval: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    """``interval()``, read from ``cache`` (an EmbeddingCache) when ``parts`` (its key) names a finite
    interval stored before."""
    if parts is None:  # a statistic without a stable name (a lambda): recomputed every run
        return interval()

    def compute() -> np.ndarray:
        ci = interval()
        if not all(math.isfinite(end) for end in ci):
            raise _NotStored(ci)
        return np.array(ci, dtype=np.float64)  # (2,)

    try:
        lo, hi = cache.get_or_compute(parts, compute)
    except _NotStored as not_stored:
        return not_stored.args[0]
    return float(lo), float(hi)


@dataclass
class Recorder:
    """Records metric cells of one test for the report; the gates judge each one as it is recorded.

    ``record(metric, value, dataset=..., condition=..., ci=..., n=..., samples={...})`` records one row;
    ``record.measure(metric, statistic, *arrays, ...)`` computes the value and its bootstrap CI first,
    ``record.proportion(metric, successes, ...)`` a rate with its Wilson CI, ``record.interval(...)`` the CI
    alone. Each returns the row's JSON object (docs/architecture.md, "Report row").
    """

    test: str  # the recording test's node id
    property: str | None  # its property marker; None: the test carries none (recording is then refused)
    model: Any  # the test's `clip` (a LoadedModel), or None for a test without one
    seed: int  # the test's seed (clip_robustness.plugins.stats.seed_for): CIs and paired comparisons
    samples_dir: Path  # where per-sample files go (this run's staging folder)
    cache: Any  # the process's EmbeddingCache: bootstrap CIs are cached there
    sink: Callable[[dict[str, Any]], None]  # takes each finished, checked row
    gate: Callable[[dict[str, Any], Samples | None], None]  # sets the row's gate (and comparison) in place
    # takes each call's inputs before anything is derived from them (clip_robustness.plugins.replay stores them)
    log: Callable[[dict[str, Any]], None] | None = None

    def __call__(self, metric: str, value: float, *, dataset: str, condition: str = "",
                 ci: tuple[float, float] | None = None, n: int | None = None,
                 samples: Samples | None = None, extra: dict[str, Any] | None = None,
                 model: str | None = None, undefined: str | None = None) -> dict[str, Any]:
        """Record one cell: ``metric`` (a name in clip_robustness.plugins.metrics.METRICS) of ``model`` (default:
        the test's ``clip``) on ``dataset`` under ``condition`` (clip_robustness.fixtures.conditions.condition).
        A non-finite value is recorded as undefined (``undefined``: why); ``samples`` are the per-sample arrays
        a baseline comparison recomputes the metric from (the metric's ``recompute``)."""
        from clip_robustness.plugins.metrics import metric_info
        from clip_robustness.plugins.report import save_samples

        info = metric_info(metric)  # unknown metric names are an error, with suggestions
        if self.log is not None:
            self.log({"metric": metric, "value": float(value), "dataset": dataset, "condition": condition,
                      "ci": None if ci is None else [float(ci[0]), float(ci[1])], "n": None if n is None else int(n),
                      "extra": copy.deepcopy(extra or {}), "undefined": undefined, "arrays": samples,
                      "model": model or (self.model.id if self.model is not None else None)})
        extra = dict(extra or {})
        value = float(value)
        if not math.isfinite(value):
            # A metric undefined on this input (NaN by design, with a warning) is never a number in the
            # report: value None, the reason (`undefined`: the metric's warning) in extra; gates fail on it.
            value = None
            extra.setdefault("undefined", undefined or "non-finite value")
        if ci is not None:
            # No check that the value lies inside: the percentile bootstrap of a biased statistic
            # (ECE grows under resampling) can sit beside it; gates read the interval.
            ci = (float(ci[0]), float(ci[1])) if all(math.isfinite(float(end)) for end in ci) else None
            if ci is None and value is not None:
                extra.setdefault("ci_note", undefined or "non-finite interval")
        model_id = model or (self.model.id if self.model is not None else None)
        if model_id is None:
            raise ValueError("record(): this test has no `clip` fixture; pass model=<model id>")
        if self.property is None:
            from clip_robustness.plugins.properties import PROPERTIES

            raise pytest.UsageError(f"{self.test} records metrics but carries no property marker; add e.g. "
                                    f"`pytestmark = pytest.mark.ood` (known: {', '.join(PROPERTIES)})")
        row = Row(self.property, model_id, dataset, condition, metric, value, list(ci) if ci else None,
                  None if n is None else int(n), info.higher_is_better, None, self.test,
                  save_samples(self.samples_dir, samples) if samples else None, extra)
        _check(row, f"record(): the row of {self.test}")
        data = row.to_json()
        self.gate(data, samples)
        problems = row_problems(data, f"the row of {self.test} (after the report-row hook and the gates)")
        if problems:  # a hook may break it
            raise ValueError(problems[0])
        self.sink(data)
        return data

    def measure(self, metric: str, statistic: Callable[..., float], *arrays: np.ndarray, dataset: str,
                condition: str = "", samples: Samples | None = None,
                extra: dict[str, Any] | None = None, two_sample: bool = False,
                model: str | None = None) -> dict[str, Any]:
        """Value and 95% bootstrap CI of ``statistic(*arrays)``; items are resampled jointly
        (``two_sample=True``: two groups resampled independently, e.g. ID and OOD scores). The CI is
        cached on disk with the embeddings, keyed by ``clip_robustness.plugins.stats.ci_cache_parts``."""
        def compute() -> tuple[float, tuple[float, float]]:
            return statistic(*arrays), self.interval(statistic, *arrays, two_sample=two_sample)

        (value, ci), why = _undefined_reason(compute)
        n = len(arrays[0]) + len(arrays[1]) if two_sample else len(arrays[0])
        return self(metric, value, dataset=dataset, condition=condition, ci=ci, n=n, samples=samples, extra=extra,
                    model=model, undefined=why)

    def interval(self, statistic: Callable[..., float], *arrays: np.ndarray,
                 two_sample: bool = False) -> tuple[float, float]:
        """The 95% bootstrap CI of ``statistic(*arrays)`` that ``measure`` records, for a test that records
        the value itself; cached on disk with the embeddings, keyed by ``clip_robustness.plugins.stats.ci_cache_parts``."""
        from clip_robustness.plugins.stats import bootstrap_ci, bootstrap_ci_two_sample, ci_cache_parts

        def compute() -> tuple[float, float]:
            if two_sample:
                return bootstrap_ci_two_sample(statistic, arrays[0], arrays[1], seed=self.seed)
            return bootstrap_ci(statistic, *arrays, seed=self.seed)

        parts = ci_cache_parts(statistic, arrays, two_sample=two_sample, seed=self.seed)
        return _cached_interval(self.cache, parts, compute)

    def proportion(self, metric: str, successes: np.ndarray, *, dataset: str, condition: str = "",
                   samples: Samples | None = None, extra: dict[str, Any] | None = None,
                   model: str | None = None) -> dict[str, Any]:
        """A mean of 0/1 outcomes (accuracy, consistency) with its Wilson 95% interval."""
        from clip_robustness.plugins.stats import proportion_ci

        successes = np.asarray(successes, dtype=bool)  # (N,)
        ci, why = _undefined_reason(lambda: proportion_ci(successes))
        return self(metric, float(successes.mean()) if successes.size else math.nan, dataset=dataset,
                    condition=condition, ci=ci, n=successes.size, samples=samples,
                    extra=extra, model=model, undefined=why or (None if successes.size else "no samples"))


def _check(row: Row, where: str) -> None:
    """A row is checked when recorded, so a bad one fails its test, not the report at the end of the run."""
    problems = row.validate(where)
    if problems:
        raise ValueError(problems[0])


# ------------------------------------------------------------------ the pytest side of the channel


def gate_row(config: pytest.Config, item: pytest.Item, baseline: Any, seed: int, row: dict[str, Any],
             samples: Samples | None) -> None:
    """The ``gate`` a Recorder is handed: the report-row hook, then the bound verdict and, with a
    ``baseline`` (clip_robustness.plugins.regression.Baseline), the paired comparison (resampled with the
    test's ``seed``) and regression verdict, attached to ``row``. Failures are raised at the end of the test (clip_robustness.plugins.robustness
    .pytest_runtest_call), so every metric of the test is recorded first."""
    from clip_robustness.plugins.gates import FAIL, INCONCLUSIVE, InconclusiveGateWarning, bound_verdict, select_threshold

    config.hook.pytest_robustness_report_row(config=config, row=row)
    rb = config.stash[RB_CONFIG]
    gates = []
    rule = config.hook.pytest_robustness_threshold(config=config, row=row) or select_threshold(rb.thresholds, row)
    if rule is not None and (rule.min is not None or rule.max is not None):
        gates.append(bound_verdict(row, rule))
    comparison = _compare(row, samples, baseline, templates=rb.templates[0], seed=seed, run=rb)
    if comparison is not None:
        row["extra"]["comparison"] = comparison
        drop_rule = select_threshold(rb.thresholds, row, kind="regression")
        if drop_rule is not None:
            from clip_robustness.plugins.regression import regression_verdict

            gates.append(regression_verdict(row, comparison, drop_rule))
    if not gates:
        return
    order = {FAIL: 0, INCONCLUSIVE: 1}
    row["gate"] = min(gates, key=lambda g: order.get(g["verdict"], 2))  # the worst verdict speaks for the row
    if len(gates) > 1:
        row["extra"]["gates"] = gates
    for gate in gates:
        if gate["verdict"] == FAIL or (gate["verdict"] == INCONCLUSIVE and rb.strict):
            item.stash.setdefault(GATE_FAILURES, []).append(gate["message"])
        elif gate["verdict"] == INCONCLUSIVE:
            warnings.warn(InconclusiveGateWarning(gate["message"]), stacklevel=2)


GATE_FAILED = "robustness gate failed:"


def raise_gate_failures(item: pytest.Item) -> None:
    """Fail the test with the gate sentences ``gate_row`` collected for it, if any (after all its cells)."""
    failures = item.stash.get(GATE_FAILURES, [])
    if failures:
        pytest.fail(GATE_FAILED + "\n  " + "\n  ".join(failures), pytrace=False)


def _compare(row: dict[str, Any], samples: Samples | None, baseline: Any, *, templates: str, seed: int,
             run: Any = None) -> dict[str, Any] | None:
    """The comparison with the baseline's counterpart cell, if there is a baseline and a cell
    (clip_robustness.plugins.regression.compare_with_baseline; ``run`` is this run's RunConfig)."""
    if baseline is None:
        return None
    from clip_robustness.plugins.regression import compare_with_baseline

    return compare_with_baseline(row, samples, baseline, run, templates=templates, seed=seed)


def ship_row(item: pytest.Item, shipped_models: set[str], describe: Callable[[str], dict[str, Any] | None],
             row: dict[str, Any]) -> None:
    """The ``sink`` a Recorder is handed: the row (and, once per test and model, the model's description
    for the report's run.models) as JSON in ``item.user_properties``, which xdist ships to the controller's
    report session (clip_robustness.plugins.report.ReportSession) as it does without -n."""
    from clip_robustness.plugins.report import MODEL_KEY, ROW_KEY

    if row["model"] not in shipped_models:
        info = describe(row["model"])
        if info is not None:
            item.user_properties.append((MODEL_KEY, json.dumps({"id": row["model"], "info": info})))
            shipped_models.add(row["model"])
    item.user_properties.append((ROW_KEY, json.dumps(row, allow_nan=True)))
