"""Statistics for confidence intervals and regression gates.

* :func:`bootstrap_ci` -- percentile (or basic / BCa) bootstrap over items, resampling all arrays
  jointly (paired), so a metric of ``(logits (N, C), labels (N,))`` keeps rows together.
* :func:`bootstrap_ci_two_sample` -- stratified bootstrap for two-group statistics such as OOD
  AUROC: each group is resampled on its own, so group sizes stay fixed.
* :func:`paired_bootstrap_delta` -- candidate minus baseline on the same items, same resampled
  indices for both, with a one-sided p-value for a drop.
* :func:`proportion_ci` -- Wilson interval for the mean of a 0/1 vector (fast path for accuracy).
* :func:`mcnemar_test` -- exact McNemar test on paired correctness.
* :func:`seed_for` -- per-test seeds derived from the global seed.

All resampling goes through ``scipy.stats.bootstrap`` over *item indices*: scipy resamples 1-D
samples along one axis, while metrics take 2-D arrays and several arrays at once; resampling the
index vector and indexing every array with it gives joint row resampling for any statistic, with
scipy's interval methods (percentile, basic, BCa) and its batching. A statistic with a batched form
(:func:`clip_robustness.plugins.metrics.batched_form`: means, ECE/MCE/adaptive ECE, NLL, Brier, AUROC, FPR@TPR, AUPR)
is evaluated on a whole (B, k) matrix of resampled indices at once (``vectorized=True``) from per-item
summaries; any other runs once per resample (``vectorized=False``). scipy draws the same indices in
both modes, so the two give the same interval up to floating-point summation order.
Undefined statistics give ``(nan, nan)`` with an
:class:`~clip_robustness.plugins.metrics.UndefinedMetricWarning`, never an exception.

Statistics without a batched form run once per resample, so pass them with ``validate=False`` after
validating the inputs once, e.g. ``functools.partial(expected_calibration_error, validate=False)``.
:func:`ci_cache_parts` names an interval for an on-disk cache (``clip_robustness.fixtures.cache``).
"""

from __future__ import annotations

import hashlib
import math
import sys
import warnings
import zlib
from functools import lru_cache, partial
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats

from clip_robustness.plugins.metrics import UndefinedMetricWarning, batched_form

__all__ = [
    "bootstrap_ci",
    "bootstrap_ci_two_sample",
    "ci_cache_parts",
    "mcnemar_test",
    "paired_bootstrap_delta",
    "proportion_ci",
    "seed_for",
    "too_few_to_resample",
]

Method = Literal["percentile", "basic", "BCa"]
_METHODS = ("percentile", "basic", "BCa")
# Upper bound on resampled indices held at once (n_resamples x n int64): 4M entries = 32 MiB.
MAX_BATCH_ENTRIES = 1 << 22

Interval = tuple[float, float]


def _check_options(n_resamples: Any, confidence: Any, method: str) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) \
            or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; got {method!r}")


def _items(arrays: Sequence[Any], name: str) -> tuple[list[np.ndarray], int]:
    """Arrays that share their first (item) axis, and that length."""
    if isinstance(arrays, np.ndarray) or not isinstance(arrays, (list, tuple)):
        raise TypeError(f"{name} must be a tuple of arrays, e.g. (logits, labels); "
                        f"got {type(arrays).__name__}")
    if not arrays:
        raise ValueError(f"{name} needs at least one array")
    out = [np.asarray(a) for a in arrays]
    if any(a.ndim == 0 for a in out):
        raise ValueError(f"{name}: every array needs an item axis; got a 0-d array")
    lengths = {a.shape[0] for a in out}
    if len(lengths) != 1:
        raise ValueError(f"{name} must share the item axis (axis 0); got lengths "
                         f"{[a.shape[0] for a in out]}")
    return out, out[0].shape[0]


def _nan_interval(message: str) -> Interval:
    warnings.warn(message, UndefinedMetricWarning, stacklevel=3)
    return (math.nan, math.nan)


def too_few_to_resample(*sizes: int) -> str | None:
    """Why no bootstrap interval exists for groups of these sizes (None when each has 2 items or more): a
    group of one item resamples to itself, so it has no spread (and scipy refuses it). The sentence becomes
    the row's ``ci_note``; the value itself stays a number."""
    if min(sizes) >= 2:
        return None
    held = (f"the two groups (e.g. ID and OOD items) hold {sizes[0]} and {sizes[1]}" if len(sizes) == 2
            else f"there is {sizes[0]}")
    return (f"no confidence interval: a bootstrap needs at least 2 items per group to resample and {held}; "
            "give more images (or a larger --limit)")


def batched_statistic(statistic: Callable[..., float], arrays: Sequence[np.ndarray], *,
                      samples: int = 1) -> Callable[..., np.ndarray] | None:
    """``statistic`` as a function of index matrices, evaluated on all their rows (resamples) at once from
    per-item summaries, when it has a batched form covering ``arrays``; None: call it per resample.
    ``samples=1``: one index matrix for every array (joint resampling, e.g. ID and OOD scores paired);
    2: one per array (two-sample)."""
    found = batched_form(statistic)
    if found is None or samples not in (1, found[0].samples):
        return None
    form, options = found
    summaries = form.per_item(*arrays, **options)
    if summaries is None:
        return None

    def of_indices(*indices: np.ndarray, axis: int = -1) -> np.ndarray:
        # scipy passes (B, k) resamples per sample; BCa also passes the 1-D full index vectors, and its
        # jackknife pairs (B, n - 1) rows of one sample with (1, m) rows of the other: broadcast the rows.
        rows = [np.atleast_2d(i) for i in indices] * (form.samples // len(indices))
        n_rows = max(r.shape[0] for r in rows)
        rows = [np.broadcast_to(r, (n_rows, r.shape[1])) for r in rows]
        values = np.asarray(form.from_resamples(summaries, *rows, **options), dtype=np.float64)
        return values[0] if all(np.ndim(i) == 1 for i in indices) else values

    return of_indices


def _run_bootstrap(index_samples: tuple[np.ndarray, ...], stat_of_indices: Callable[..., float],
                   *, n_resamples: int, confidence: float, seed: int,
                   method: Method, vectorized: bool = False) -> Any:
    """scipy.stats.bootstrap over index vectors (per-resample degeneracy is left to _interval);
    ``vectorized``: ``stat_of_indices`` takes (B, k) index matrices (see batched_statistic)."""
    n_max = max(len(i) for i in index_samples)
    batch = max(1, min(n_resamples, MAX_BATCH_ENTRIES // max(n_max, 1)))
    # A resample with one class makes a metric warn and return nan, and BCa divides by zero on a
    # constant distribution; _interval reports the resulting nan interval once, not per resample.
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        return stats.bootstrap(index_samples, stat_of_indices, n_resamples=n_resamples,
                               batch=batch, vectorized=vectorized, paired=False,
                               confidence_level=confidence, method=method,
                               rng=np.random.default_rng(seed))


def _interval(res: Any, what: str) -> Interval:
    lo, hi = (float(v) for v in (res.confidence_interval.low, res.confidence_interval.high))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        n_bad = int(np.sum(~np.isfinite(res.bootstrap_distribution)))
        if n_bad == 0:  # only BCa fails on finite resamples: a constant bootstrap distribution
            return _nan_interval(f"{what}: the BCa interval is undefined because every resample "
                                 "gave the same value; use method='percentile'")
        return _nan_interval(f"{what}: the bootstrap interval is undefined ({n_bad} of "
                             f"{res.bootstrap_distribution.size} resamples gave a non-finite "
                             "statistic, e.g. a resample with a single class)")
    return lo, hi


def bootstrap_ci(statistic: Callable[..., float], *arrays: Any, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0,
                 method: Method = "percentile") -> Interval:
    """Bootstrap confidence interval of ``statistic(*arrays)``, resampling items jointly.

    All ``arrays`` share axis 0 (the items); each resample draws item indices with replacement
    and takes the same rows from every array (a paired bootstrap), so 2-D inputs such as logits
    (N, C) stay whole. ``method`` is ``"percentile"`` (default), ``"basic"`` or ``"BCa"`` (BCa
    costs N extra statistic calls for the jackknife). Deterministic for a given ``seed``.
    Returns ``(nan, nan)`` with an ``UndefinedMetricWarning`` when the statistic is undefined on
    the data or on some resamples.

    >>> x = np.random.default_rng(0).normal(loc=1.0, size=400)
    >>> lo, hi = bootstrap_ci(np.mean, x, n_resamples=500, seed=1)
    >>> bool(lo < 1.0 < hi), round(hi - lo, 1)
    (True, 0.2)
    """
    _check_options(n_resamples, confidence, method)
    data, n = _items(arrays, "arrays")
    if n == 0:
        return _nan_interval("bootstrap_ci is undefined for 0 items")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        point = float(statistic(*data))
    if not math.isfinite(point):
        return _nan_interval(f"bootstrap_ci: the statistic is {point} on the full data, so it has "
                             "no interval")
    if too_few_to_resample(n):
        return _nan_interval(too_few_to_resample(n))
    batched = batched_statistic(statistic, data)
    res = _run_bootstrap((np.arange(n),), batched or (lambda i: float(statistic(*(a[i] for a in data)))),
                         n_resamples=n_resamples, confidence=confidence, seed=seed, method=method,
                         vectorized=batched is not None)
    return _interval(res, "bootstrap_ci")


def bootstrap_ci_two_sample(statistic: Callable[[np.ndarray, np.ndarray], float], a: Any, b: Any,
                            *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                            method: Method = "percentile") -> Interval:
    """Stratified bootstrap interval of ``statistic(a, b)`` for two independent groups.

    ``a`` and ``b`` (e.g. ID and OOD scores, lengths N and M) are resampled independently, each
    keeping its own size -- the right scheme for AUROC, FPR95 and AUPR, whose value depends on
    the ID/OOD proportions. Options as in :func:`bootstrap_ci`.

    >>> from clip_robustness.plugins.metrics import ood_auroc_score
    >>> rng = np.random.default_rng(0)
    >>> lo, hi = bootstrap_ci_two_sample(ood_auroc_score, rng.normal(1, 1, 300),
    ...                                  rng.normal(0, 1, 200), n_resamples=300)
    >>> bool(lo < 0.76 < hi)  # true AUROC = Phi(1 / sqrt(2)) = 0.760
    True
    """
    _check_options(n_resamples, confidence, method)
    xa, xb = np.asarray(a), np.asarray(b)
    for name, x in (("a", xa), ("b", xb)):
        if x.ndim == 0:
            raise ValueError(f"{name} needs an item axis (axis 0); got a 0-d array")
    if xa.shape[0] == 0 or xb.shape[0] == 0:
        return _nan_interval(f"bootstrap_ci_two_sample is undefined with group sizes "
                             f"{xa.shape[0]} and {xb.shape[0]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        point = float(statistic(xa, xb))
    if not math.isfinite(point):
        return _nan_interval(f"bootstrap_ci_two_sample: the statistic is {point} on the full "
                             "data, so it has no interval")
    if too_few_to_resample(xa.shape[0], xb.shape[0]):  # e.g. an OOD folder of one image
        return _nan_interval(too_few_to_resample(xa.shape[0], xb.shape[0]))
    batched = batched_statistic(statistic, (xa, xb), samples=2)
    res = _run_bootstrap((np.arange(xa.shape[0]), np.arange(xb.shape[0])),
                         batched or (lambda i, j: float(statistic(xa[i], xb[j]))),
                         n_resamples=n_resamples, confidence=confidence, seed=seed, method=method,
                         vectorized=batched is not None)
    return _interval(res, "bootstrap_ci_two_sample")


def paired_bootstrap_delta(statistic: Callable[..., float], cand_arrays: Sequence[Any],
                           base_arrays: Sequence[Any], *, n_resamples: int = 1000,
                           confidence: float = 0.95, seed: int = 0,
                           higher_is_better: bool = True) -> tuple[float, Interval, float]:
    """Candidate-minus-baseline difference of a statistic on the same items, with CI and p-value.

    ``cand_arrays`` and ``base_arrays`` are tuples of arrays over the same N items in the same
    order (e.g. ``(cand_logits, labels)`` and ``(base_logits, labels)``); every resample uses the
    same indices for both, so item difficulty cancels. Returns ``(delta, (lo, hi), p_value)``
    with a percentile interval. ``p_value`` is one-sided for a *drop* (candidate worse, i.e.
    ``delta < 0`` when ``higher_is_better`` else ``delta > 0``): the fraction of resamples in
    which the candidate is not worse, ``(1 + #not_worse) / (1 + n_resamples)``. It agrees with
    the percentile interval and is 1 for identical inputs.

    >>> rng = np.random.default_rng(0)
    >>> base = rng.random(500) < 0.8
    >>> cand = base & (rng.random(500) > 0.15)  # the candidate loses ~12 points of accuracy
    >>> delta, (lo, hi), p = paired_bootstrap_delta(np.mean, (cand,), (base,), n_resamples=500)
    >>> bool(hi < 0), bool(p < 0.01)
    (True, True)
    """
    _check_options(n_resamples, confidence, "percentile")
    cand, n = _items(cand_arrays, "cand_arrays")
    base, n_base = _items(base_arrays, "base_arrays")
    if n != n_base:
        raise ValueError(f"cand_arrays and base_arrays must cover the same items; got {n} and "
                         f"{n_base} items")
    nan_result = (math.nan, (math.nan, math.nan), math.nan)
    if n == 0:
        _nan_interval("paired_bootstrap_delta is undefined for 0 items")
        return nan_result

    def delta_of(i: np.ndarray | slice) -> float:
        return float(statistic(*(a[i] for a in cand))) - float(statistic(*(a[i] for a in base)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        delta = delta_of(slice(None))
    if not math.isfinite(delta):
        _nan_interval(f"paired_bootstrap_delta: the difference is {delta} on the full data")
        return nan_result
    if too_few_to_resample(n):
        _nan_interval(too_few_to_resample(n))
        return (delta, (math.nan, math.nan), math.nan)
    cand_batched, base_batched = batched_statistic(statistic, cand), batched_statistic(statistic, base)
    vectorized = cand_batched is not None and base_batched is not None
    res = _run_bootstrap((np.arange(n),),
                         (lambda i, axis=-1: cand_batched(i) - base_batched(i)) if vectorized else delta_of,
                         n_resamples=n_resamples, confidence=confidence, seed=seed, method="percentile",
                         vectorized=vectorized)
    lo, hi = _interval(res, "paired_bootstrap_delta")
    if math.isnan(lo):
        return (delta, (lo, hi), math.nan)
    deltas = res.bootstrap_distribution  # (n_resamples,)
    not_worse = deltas >= 0 if higher_is_better else deltas <= 0
    p_value = (1 + int(np.sum(not_worse))) / (1 + deltas.size)
    return delta, (lo, hi), p_value


def _binary_vector(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"expected {name} of shape (N,), got {arr.shape}")
    if arr.dtype != bool:
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"{name} must hold booleans or 0/1; got dtype {arr.dtype}")
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans or 0/1 (correct per item); got values "
                             f"such as {arr[~np.isin(arr, (0, 1))][0]}")
        arr = arr.astype(bool)
    return arr


def proportion_ci(successes: Any, *, confidence: float = 0.95) -> Interval:
    """Wilson score interval for the mean of a 0/1 vector (e.g. per-item correctness).

    Uses ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``. Wilson rather than a
    bootstrap for accuracies: it is exact to compute, needs no resampling, and keeps sensible
    coverage near 0 and 1 and for small N, where the percentile bootstrap collapses to a point.

    >>> lo, hi = proportion_ci([1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    >>> round(lo, 4), round(hi, 4)
    (0.3968, 0.8922)
    """
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")
    x = _binary_vector(successes, "successes")
    if x.size == 0:
        return _nan_interval("proportion_ci is undefined for 0 items")
    ci = stats.binomtest(int(x.sum()), x.size).proportion_ci(confidence_level=confidence,
                                                             method="wilson")
    return float(ci.low), float(ci.high)


Alternative = Literal["less", "greater", "two-sided"]
_ALTERNATIVES = ("less", "greater", "two-sided")


def mcnemar_test(correct_candidate: Any, correct_baseline: Any, *,
                 alternative: Alternative = "less") -> tuple[float, float]:
    """Exact McNemar test of candidate vs baseline accuracy on the same items.

    Only discordant items carry information: ``b`` = candidate right and baseline wrong,
    ``c`` = candidate wrong and baseline right. Under H0 ``b ~ Binomial(b + c, 1/2)``; the
    p-value is ``scipy.stats.binomtest(b, b + c)`` with ``alternative="less"`` (default: the
    candidate is worse), ``"greater"`` or ``"two-sided"``. Returns ``(delta, p_value)`` with
    ``delta = acc_candidate - acc_baseline = (b - c) / N``; no discordant items give p = 1.

    >>> cand = [1] * 2 + [0] * 8 + [1] * 10   # b = 2, c = 8, 10 concordant
    >>> base = [0] * 2 + [1] * 8 + [1] * 10
    >>> delta, p = mcnemar_test(cand, base)
    >>> delta, round(p, 6)   # P(X <= 2), X ~ Bin(10, 1/2) = 56 / 1024
    (-0.3, 0.054688)
    """
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}; got {alternative!r}")
    cand = _binary_vector(correct_candidate, "correct_candidate")
    base = _binary_vector(correct_baseline, "correct_baseline")
    if cand.shape != base.shape:
        raise ValueError(f"correct_candidate and correct_baseline must cover the same items; got "
                         f"{cand.size} and {base.size}")
    if cand.size == 0:
        _nan_interval("mcnemar_test is undefined for 0 items")
        return (math.nan, math.nan)
    b = int(np.sum(cand & ~base))
    c = int(np.sum(~cand & base))
    delta = (b - c) / cand.size
    if b + c == 0:
        return delta, 1.0
    return delta, float(stats.binomtest(b, b + c, 0.5, alternative=alternative).pvalue)


def seed_for(global_seed: int, key: str) -> int:
    """Per-test seed ``(global_seed + crc32(key)) % 2**32`` (stable across runs and processes).

    >>> seed_for(0, "abc"), seed_for(2**32 - 1, "abc")
    (891568578, 891568577)
    """
    if isinstance(global_seed, bool) or not isinstance(global_seed, (int, np.integer)):
        raise TypeError(f"global_seed must be an int; got {type(global_seed).__name__}")
    if not isinstance(key, str):
        raise TypeError(f"key must be a str (e.g. the test node id); got {type(key).__name__}")
    return (int(global_seed) + zlib.crc32(key.encode("utf-8"))) % 2**32


# Bump when a change here or in clip_robustness.plugins.metrics changes an interval without changing these files' text
# (their sources are part of the key anyway).
CI_CACHE_VERSION = 1
_STABLE_OPTION = (bool, int, float, str, type(None))


def _callable_name(fn: Any) -> str | None:
    """``module.qualname`` of a module-level function; None for a lambda or a local function."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    return None if not module or not qualname or "<" in qualname else f"{module}.{qualname}"


def _statistic_identity(statistic: Callable[..., Any]) -> str | None:
    """A name for ``statistic`` that is the same in every process: the function's name plus a partial's
    options; None when it has none (lambdas, closures, options without a stable repr)."""
    args, options = (), {}
    if isinstance(statistic, partial):
        statistic, args, options = statistic.func, statistic.args, statistic.keywords
    name = _callable_name(statistic)
    values = [*args, *options.values()]
    if name is None or not all(isinstance(v, _STABLE_OPTION) for v in values):
        return None
    return f"{name}{args!r}{sorted(options.items())!r}"


@lru_cache(maxsize=None)
def _source_digest(module: str) -> str:
    """sha256 of a loaded module's source file ("" without one): an edited metric never hits."""
    path = getattr(sys.modules.get(module), "__file__", None)
    if not path:
        return ""
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def named_arrays_digest(arrays: dict[str, np.ndarray]) -> str | None:
    """The content digest of named arrays, names sorted: what names a per-sample file (plugins.report.save_samples)."""
    names = sorted(arrays)
    return arrays_digest([arrays[k] for k in names], names)


def arrays_digest(arrays: Sequence[Any], names: Sequence[str] | None = None) -> str | None:
    """sha256 of arrays' (names,) dtypes, shapes and bytes; None for object arrays (no stable bytes). The one
    digest of array content: CI cache keys, per-sample file names, result-cache entries."""
    digest = hashlib.sha256()
    for i, a in enumerate(arrays):
        arr = np.ascontiguousarray(a)
        if arr.dtype.hasobject:
            return None
        digest.update(f"{names[i] + chr(0) if names else ''}{arr.dtype.str}{arr.shape};".encode())
        digest.update(arr.data)
    return digest.hexdigest()


def ci_cache_parts(statistic: Callable[..., Any], arrays: Sequence[Any], *, two_sample: bool, seed: int,
                   n_resamples: int = 1000, confidence: float = 0.95,
                   method: Method = "percentile") -> dict[str, Any] | None:
    """What determines a bootstrap interval, for an on-disk cache key (``clip_robustness.fixtures.cache.cache_key``): a
    digest of the sample arrays, the statistic's name and options, the resampling settings, and the
    sources and versions of the code that computes it. None when the statistic has no stable name (a
    lambda or a closure): such an interval is recomputed every run.

    >>> from clip_robustness.plugins.metrics import expected_calibration_error
    >>> ece = partial(expected_calibration_error, n_bins=15, validate=False)
    >>> probs, labels = np.full((4, 2), 0.5), np.array([0, 0, 1, 1])
    >>> parts = ci_cache_parts(ece, (probs, labels), two_sample=False, seed=1)
    >>> parts["statistic"]
    "clip_robustness.plugins.metrics.expected_calibration_error()[('n_bins', 15), ('validate', False)]"
    >>> ci_cache_parts(ece, (probs, labels[::-1]), two_sample=False, seed=1) == parts
    False
    >>> ci_cache_parts(lambda p, y: 0.0, (probs, labels), two_sample=False, seed=1) is None
    True
    """
    identity = _statistic_identity(statistic)
    samples = arrays_digest(arrays) if identity is not None else None
    if samples is None:
        return None
    func = statistic.func if isinstance(statistic, partial) else statistic
    import scipy

    return {"kind": "bootstrap_ci", "ci_cache_version": CI_CACHE_VERSION, "statistic": identity,
            "samples": samples, "two_sample": bool(two_sample), "seed": int(seed),
            "n_resamples": int(n_resamples), "confidence": float(confidence), "method": method,
            "sources": [_source_digest(m) for m in ("clip_robustness.plugins.stats", "clip_robustness.plugins.metrics", func.__module__)],
            "versions": [np.__version__, scipy.__version__]}
