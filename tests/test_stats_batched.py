"""Batched bootstraps (clip_robustness.plugins.metrics.BATCHED via clip_robustness.plugins.stats) equal the per-resample loop, and
bootstrap intervals are cached on disk (clip_robustness.plugins.recorder._cached_interval)."""

from __future__ import annotations

import importlib
import math
import warnings
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clip_robustness.fixtures.cache import EmbeddingCache
from clip_robustness.plugins.recorder import _cached_interval
from clip_robustness.plugins import metrics as M
from clip_robustness.plugins import stats as S


def _loop(statistic):
    """The same statistic without a batched form: clip_robustness.plugins.stats calls it once per resample."""
    return lambda *arrays: statistic(*arrays)


def _classification(rng: np.random.Generator, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    probs = M.softmax(rng.normal(scale=3.0, size=(n, c)))
    probs[: n // 4] = np.round(probs[: n // 4], 1)  # tied confidences, some on bin edges
    probs /= probs.sum(axis=1, keepdims=True)
    return probs, rng.integers(0, c, n)


def _scores(rng: np.random.Generator, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    # rounded, so ties within and across the groups; float32 ID scores as the OOD test may pass
    return np.round(rng.normal(1.0, 1.0, n), 1).astype(np.float32), np.round(rng.normal(0.0, 1.0, m), 1)


def _counts(rng: np.random.Generator, scenes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-scene hits, same-position hits and points (S,) float64, as fixtures.multiview.score_pairs sums them."""
    points = rng.integers(20, 300, scenes).astype(float)
    return rng.binomial(points.astype(int), 0.3).astype(float), rng.binomial(points.astype(int), 0.1).astype(float), \
        points


# one case per registered batched form: (statistic as the tests pass it, data, two-sample)
CASES = {
    np.mean: (np.mean, lambda r: (r.random(120) < 0.7,), False),
    M.expected_calibration_error: (partial(M.expected_calibration_error, n_bins=15, validate=False),
                                   lambda r: _classification(r, 150, 7), False),
    M.adaptive_calibration_error: (partial(M.adaptive_calibration_error, n_bins=15, validate=False),
                                   lambda r: _classification(r, 150, 7), False),
    M.max_calibration_error: (partial(M.max_calibration_error, n_bins=15, validate=False),
                              lambda r: _classification(r, 150, 7), False),
    M.negative_log_likelihood: (partial(M.negative_log_likelihood, validate=False),
                                lambda r: _classification(r, 150, 7), False),
    M.brier_score: (partial(M.brier_score, validate=False), lambda r: _classification(r, 150, 7), False),
    M.ood_auroc_score: (partial(M.ood_auroc_score, validate=False), lambda r: _scores(r, 130, 90), True),
    M.fpr_at_tpr: (partial(M.fpr_at_tpr, tpr=0.95, validate=False), lambda r: _scores(r, 130, 90), True),
    M.aupr_in_score: (partial(M.aupr_in_score, validate=False), lambda r: _scores(r, 130, 90), True),
    M.aupr_out_score: (partial(M.aupr_out_score, validate=False), lambda r: _scores(r, 130, 90), True),
    M.accuracy_ratio: (partial(M.accuracy_ratio, validate=False),
                       lambda r: ((r.random(130) < 0.5).astype(float), (r.random(90) < 0.8).astype(float)), True),
    M.pooled_recall: (partial(M.pooled_recall, validate=False), lambda r: _counts(r, 16)[::2], False),
    M.pooled_gain: (partial(M.pooled_gain, validate=False), lambda r: _counts(r, 16), False),
}


def test_every_batched_form_has_a_case():
    assert set(CASES) == {f for f in M.BATCHED if f.__module__ in ("clip_robustness.plugins.metrics", "numpy")}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batched_modality_gap_of_the_retrieval_test_equals_the_loop(dtype):
    """Beside its definition in robustness_tests/test_retrieval.py: bit-equal in float32 too."""
    gap = importlib.import_module("robustness_tests.test_retrieval")._gap_by_image
    rng = np.random.default_rng(0)
    img, captions = rng.normal(size=(40, 16)).astype(dtype), rng.normal(size=(40, 5, 16)).astype(dtype)
    assert S.batched_statistic(gap, (img, captions)) is not None
    assert S.bootstrap_ci(gap, img, captions, n_resamples=200) == \
        S.bootstrap_ci(_loop(gap), img, captions, n_resamples=200)


@pytest.mark.parametrize("method", ["percentile", "basic", "BCa"])
@pytest.mark.parametrize("key", list(CASES), ids=lambda f: f.__name__)
def test_batched_interval_equals_the_loop(key, method):
    statistic, make, two_sample = CASES[key]
    assert S.batched_statistic(statistic, make(np.random.default_rng(0))) is not None
    for seed in range(3):
        data = make(np.random.default_rng(seed))
        run = S.bootstrap_ci_two_sample if two_sample else S.bootstrap_ci
        batched = run(statistic, *data, n_resamples=300, seed=seed, method=method)
        loop = run(_loop(statistic), *data, n_resamples=300, seed=seed, method=method)
        np.testing.assert_allclose(batched, loop, rtol=0, atol=1e-12)


@pytest.mark.parametrize("key", [M.expected_calibration_error, M.brier_score, M.ood_auroc_score],
                         ids=lambda f: f.__name__)
def test_batched_paired_delta_equals_the_loop(key):
    statistic, make, two_sample = CASES[key]
    cand, base = make(np.random.default_rng(1)), make(np.random.default_rng(2))
    if two_sample:  # paired over the same items: score pairs of equal length
        cand, base = (cand[0][:90], cand[1]), (base[0][:90], base[1])
    batched = S.paired_bootstrap_delta(statistic, cand, base, n_resamples=300, seed=3)
    loop = S.paired_bootstrap_delta(_loop(statistic), cand, base, n_resamples=300, seed=3)
    np.testing.assert_allclose([batched[0], *batched[1], batched[2]], [loop[0], *loop[1], loop[2]],
                               rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), m=st.integers(1, 40), k=st.integers(1, 60),
       levels=st.integers(1, 6), key=st.sampled_from(list(CASES)))
def test_from_resamples_equals_the_statistic_on_each_row(seed, n, m, k, levels, key):
    """Any (B, k) index matrix, tiny or heavily tied data (``levels`` distinct values), k != n."""
    statistic, _, two_sample = CASES[key]
    rng = np.random.default_rng(seed)
    if two_sample:
        data = (rng.integers(0, levels, n) / levels, rng.integers(0, levels, m) / levels)
        idx = (rng.integers(0, n, (5, k)), rng.integers(0, m, (5, max(1, k // 2))))
    elif key is np.mean:
        data, idx = (rng.integers(0, levels, n) / levels,), (rng.integers(0, n, (5, k)),)
    elif key in (M.pooled_recall, M.pooled_gain):  # per-scene counts, at least one point per scene
        points = rng.integers(1, 3 * levels, n).astype(float)
        counts = (rng.binomial(points.astype(int), 0.4).astype(float), rng.binomial(points.astype(int), 0.2), points)
        data, idx = (counts[::2] if key is M.pooled_recall else counts), (rng.integers(0, n, (5, k)),)
    else:
        logits = rng.integers(0, levels, (n, 3)).astype(float)
        data, idx = (M.softmax(logits), rng.integers(0, 3, n)), (rng.integers(0, n, (5, k)),)
    form, options = M.batched_form(statistic)
    with warnings.catch_warnings():  # a ratio over an all-zero resample is nan (and says so) in both
        warnings.simplefilter("ignore", M.UndefinedMetricWarning)
        got = form.from_resamples(form.per_item(*data, **options), *idx, **options)
        per_array = idx if two_sample else idx * len(data)  # one-sample: every array takes the same rows
        expected = [statistic(*(a[rows[r]] for a, rows in zip(data, per_array))) for r in range(5)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_inputs_without_a_batched_form_use_the_loop():
    rng = np.random.default_rng(0)
    assert S.batched_statistic(np.mean, (rng.random((20, 3)),)) is None  # np.mean of a matrix: the loop
    assert M.batched_form(partial(M.fpr_at_tpr, 0.9)) is None  # positional option
    assert M.batched_form(partial(M.brier_score, scale=2)) is None  # option the form does not know
    assert M.batched_form(lambda a, b: 0.0) is None
    x = rng.random((60, 3))
    assert S.bootstrap_ci(np.mean, x, n_resamples=100) == S.bootstrap_ci(_loop(np.mean), x, n_resamples=100)


def test_the_calibration_bootstrap_never_resamples_the_probability_matrix(monkeypatch):
    probs, labels = _classification(np.random.default_rng(0), 200, 50)
    seen = []
    original = M._calibration_gap_from_resamples
    monkeypatch.setitem(M.BATCHED, M.expected_calibration_error, M.BatchedForm(
        M._top_label_items, lambda s, idx, **o: seen.append([a.shape for a in s]) or original(
            s, idx, strategy="uniform", reduce="mean", **o), frozenset({"n_bins"})))
    S.bootstrap_ci(partial(M.expected_calibration_error, n_bins=15), probs, labels, n_resamples=50)
    assert seen and all(shapes == [(200,), (200,)] for shapes in seen)


# ------------------------------------------------------------------------------ the CI cache


def _ece_interval(probs, labels, cache, seed=0):
    ece = partial(M.expected_calibration_error, n_bins=15, validate=False)
    calls = []

    def interval():
        calls.append(1)
        return S.bootstrap_ci(ece, probs, labels, n_resamples=200, seed=seed)

    parts = S.ci_cache_parts(ece, (probs, labels), two_sample=False, seed=seed, n_resamples=200)
    return _cached_interval(cache, parts, interval), len(calls)


def test_interval_cache_hits_on_a_rerun_and_misses_on_changed_input(tmp_path):
    probs, labels = _classification(np.random.default_rng(0), 150, 7)
    first, computed = _ece_interval(probs, labels, EmbeddingCache(tmp_path))
    assert computed == 1
    fresh = EmbeddingCache(tmp_path)  # a new process: read from disk
    assert _ece_interval(probs, labels, fresh) == (first, 0) and (fresh.hits, fresh.misses) == (1, 0)
    changed = labels.copy()
    changed[0] = (changed[0] + 1) % 7
    for args in ((probs, changed), (probs.astype(np.float32), labels)):
        assert _ece_interval(*args, EmbeddingCache(tmp_path))[1] == 1
    assert _ece_interval(probs, labels, EmbeddingCache(tmp_path), seed=1)[1] == 1


def test_interval_cache_key_names_the_statistic_and_its_options():
    x = (np.arange(10.0),)
    key = partial(S.ci_cache_parts, two_sample=False, seed=0)
    ece = partial(M.expected_calibration_error, validate=False)
    assert key(partial(ece, n_bins=10), x) != key(partial(ece, n_bins=15), x)
    assert key(np.mean, x) != key(np.median, x)
    assert key(np.mean, x) != key(np.mean, x, n_resamples=999) != key(np.mean, x, method="BCa")
    assert key(lambda a: a.mean(), x) is None and key(partial(np.mean, axis=[0]), x) is None


def test_undefined_interval_is_not_stored_and_warns_every_run(tmp_path):
    cache = EmbeddingCache(tmp_path)
    parts = S.ci_cache_parts(np.mean, (np.zeros(3),), two_sample=False, seed=0)
    for _ in range(2):
        with pytest.warns(M.UndefinedMetricWarning):
            ci = _cached_interval(cache, parts, lambda: S._nan_interval("undefined here"))
        assert all(math.isnan(end) for end in ci)
    assert not [p for p in tmp_path.rglob("*.npz")]


@pytest.mark.parametrize("key", [M.ood_auroc_score, M.fpr_at_tpr, M.accuracy_ratio], ids=lambda f: f.__name__)
def test_paired_two_group_delta_batched_equals_the_loop(key):
    """The regression gate's stratified paired bootstrap: all resamples at once, from the loop's own draws."""
    from clip_robustness.plugins.regression import paired_two_group_delta

    statistic, make, _ = CASES[key]
    cand, base = make(np.random.default_rng(1)), make(np.random.default_rng(2))
    batched = paired_two_group_delta(statistic, cand, base, n_resamples=300, seed=3)
    loop = paired_two_group_delta(_loop(statistic), cand, base, n_resamples=300, seed=3)
    np.testing.assert_allclose([batched[0], *batched[1], batched[2]], [loop[0], *loop[1], loop[2]], rtol=0, atol=1e-12)
