"""clip_robustness.plugins.stats: bootstrap intervals, paired comparison, McNemar, Wilson, per-test seeds."""

from __future__ import annotations

import doctest
import math
import zlib

import numpy as np
import pytest
from scipy.stats import binom, norm

from clip_robustness.fixtures.factors import bootstrap_ci_vector
from clip_robustness.plugins import metrics as M
from clip_robustness.plugins import stats as S
from clip_robustness.plugins.metrics import UndefinedMetricWarning
from clip_robustness.plugins.regression import paired_two_group_delta


def test_stats_doctests_pass():
    result = doctest.testmod(S, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


# ------------------------------------------------------------------------------ bootstrap_ci


def test_bootstrap_ci_covers_true_mean_for_most_seeds():
    covered = 0
    for seed in range(40):
        x = np.random.default_rng(seed).normal(loc=1.0, size=100)
        lo, hi = S.bootstrap_ci(np.mean, x, n_resamples=400, seed=seed)
        covered += lo < 1.0 < hi
    # nominal 95%; the percentile interval at n=100 runs slightly narrow. 40 draws: expect ~37.
    assert covered >= 34, covered


def test_bootstrap_ci_is_deterministic_per_seed():
    x = np.random.default_rng(0).normal(size=200)
    first = S.bootstrap_ci(np.mean, x, n_resamples=300, seed=7)
    assert S.bootstrap_ci(np.mean, x, n_resamples=300, seed=7) == first
    assert S.bootstrap_ci(np.mean, x, n_resamples=300, seed=8) != first


def test_bootstrap_ci_width_shrinks_like_one_over_sqrt_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 400, 1600):
        lo, hi = S.bootstrap_ci(np.mean, rng.normal(size=n), n_resamples=400, seed=0)
        widths.append(hi - lo)
    ratios = [widths[0] / widths[1], widths[1] / widths[2]]
    assert all(1.5 < r < 2.7 for r in ratios), (widths, ratios)


def test_bootstrap_ci_resamples_rows_jointly():
    a = np.arange(50.0)
    b = np.c_[2 * a, -a]  # (N, 2): rows must stay aligned with a
    assert S.bootstrap_ci(lambda x, y: float(np.max(np.abs(y[:, 0] - 2 * x))), a, b,
                          n_resamples=200) == (0.0, 0.0)


def test_bootstrap_ci_of_accuracy_agrees_with_wilson():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 2000)
    logits = rng.normal(size=(2000, 4))
    logits[np.arange(2000), labels] += 1.0  # about 60% accuracy
    boot = S.bootstrap_ci(M.top1_accuracy, logits, labels, n_resamples=500)
    wilson = S.proportion_ci(logits.argmax(axis=1) == labels)
    np.testing.assert_allclose(boot, wilson, atol=0.01)


@pytest.mark.parametrize("method", ["basic", "BCa"])
def test_bootstrap_ci_other_methods_bracket_the_estimate(method):
    x = np.random.default_rng(3).exponential(size=150)
    lo, hi = S.bootstrap_ci(np.mean, x, n_resamples=400, method=method)
    assert lo < x.mean() < hi


def test_bootstrap_ci_undefined_statistic_gives_nan_with_warning():
    with pytest.warns(UndefinedMetricWarning, match="full data"):
        assert all(math.isnan(v) for v in S.bootstrap_ci(lambda x: math.nan, np.ones(10)))
    # Defined on the data, undefined on resamples that miss the single ID item.
    scores = np.linspace(0, 1, 20)
    is_id = np.zeros(20, dtype=bool)
    is_id[-1] = True

    def auroc(s, y):
        return M.ood_auroc_score(s[y], s[~y])

    with pytest.warns(UndefinedMetricWarning, match="resamples"):
        assert all(math.isnan(v) for v in S.bootstrap_ci(auroc, scores, is_id, n_resamples=200))
    with pytest.warns(UndefinedMetricWarning, match="0 items"):
        S.bootstrap_ci(np.mean, np.zeros(0))
    # A constant statistic has the point interval under percentile, and no BCa interval.
    assert S.bootstrap_ci(np.mean, np.ones(20), n_resamples=100) == (1.0, 1.0)
    with pytest.warns(UndefinedMetricWarning, match="method='percentile'"):
        S.bootstrap_ci(np.mean, np.ones(20), n_resamples=100, method="BCa")


@pytest.mark.parametrize("call, message", [
    (lambda: S.bootstrap_ci(np.mean, np.ones(5), n_resamples=0), "n_resamples"),
    (lambda: S.bootstrap_ci(np.mean, np.ones(5), confidence=95), r"confidence must be in \(0, 1\)"),
    (lambda: S.bootstrap_ci(np.mean, np.ones(5), method="bca"), "method must be one of"),
    (lambda: S.bootstrap_ci(lambda a, b: 0.0, np.ones(5), np.ones(4)), r"lengths \[5, 4\]"),
    (lambda: S.paired_bootstrap_delta(np.mean, np.ones(5), (np.ones(5),)), "tuple of arrays"),
    (lambda: S.paired_bootstrap_delta(np.mean, (np.ones(5),), (np.ones(4),)), "same items"),
])
def test_bad_options_raise_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# ------------------------------------------------------------------------------ two-sample


def test_two_sample_bootstrap_covers_auroc_and_keeps_group_sizes():
    true_auroc = norm.cdf(1 / math.sqrt(2))  # ID ~ N(1, 1), OOD ~ N(0, 1)
    covered = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        lo, hi = S.bootstrap_ci_two_sample(M.ood_auroc_score, rng.normal(1, 1, 150),
                                           rng.normal(0, 1, 60), n_resamples=300, seed=seed)
        covered += lo < true_auroc < hi
    assert covered >= 17, covered
    sizes = set()

    def record(a, b):
        sizes.add((a.size, b.size))
        return M.ood_auroc_score(a, b)

    S.bootstrap_ci_two_sample(record, np.arange(30.0), np.arange(7.0), n_resamples=50)
    assert sizes == {(30, 7)}


def test_two_sample_bootstrap_empty_group_is_nan():
    with pytest.warns(UndefinedMetricWarning):
        assert all(math.isnan(v) for v in S.bootstrap_ci_two_sample(
            M.ood_auroc_score, np.ones(3), np.zeros(0)))


AUROC = M.ood_auroc_score
ONE_GROUP_OF_ONE = [  # every bootstrap path, with one group of a single item (an OOD folder of one image, --limit 1)
    ("ood side", lambda: S.bootstrap_ci_two_sample(AUROC, np.arange(12.0), np.zeros(1))),
    ("id side", lambda: S.bootstrap_ci_two_sample(AUROC, np.ones(1), np.arange(3.0))),
    ("one sample", lambda: S.bootstrap_ci(np.mean, np.ones(1))),
    ("paired delta", lambda: S.paired_bootstrap_delta(np.mean, (np.ones(1),), (np.zeros(1),))[1]),
    ("paired two-group delta",
     lambda: paired_two_group_delta(AUROC, (np.arange(12.0), np.zeros(1)), (np.arange(12.0), np.ones(1)))[1]),
    ("effective robustness", lambda: bootstrap_ci_vector(lambda a: a.mean(0), np.ones((1, 3)), seed=0)),
]


@pytest.mark.parametrize("call", [c for _, c in ONE_GROUP_OF_ONE], ids=[n for n, _ in ONE_GROUP_OF_ONE])
def test_a_group_of_one_item_has_no_interval_and_says_why(call):
    """scipy refuses a sample of one item ("each sample in `data` must contain two or more observations"):
    the interval is nan with a sentence, as for 0 items, so the row keeps its value and a ci_note."""
    with pytest.warns(UndefinedMetricWarning, match="at least 2 items per group .*give more images"):
        assert np.isnan(np.asarray(call(), dtype=float)).all()


def test_an_ood_cell_of_one_image_records_its_value_with_a_null_ci_and_the_reason(tmp_path):
    from functools import partial

    from clip_robustness.fixtures.cache import EmbeddingCache
    from clip_robustness.plugins.recorder import Recorder

    rows = []
    record = Recorder("t.py::test", "ood", None, 0, tmp_path, EmbeddingCache(tmp_path / "cache"), sink=rows.append,
                      gate=lambda row, s: None)
    s_in, s_out = np.linspace(0, 1, 12), np.array([0.3])
    record.measure("auroc", partial(AUROC, validate=False), s_in, s_out, two_sample=True, dataset="ood:one", model="m")
    (row,) = rows
    assert row["value"] == AUROC(s_in, s_out) and row["ci"] is None and row["n"] == 13
    assert row["extra"]["ci_note"].startswith("no confidence interval: a bootstrap needs at least 2 items per group")
    assert "hold 12 and 1" in row["extra"]["ci_note"]


# ------------------------------------------------------------------------------ paired delta


def _planted_drop(seed: int, n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.random(n) < 0.8
    cand = base & (rng.random(n) > 0.1)  # loses ~8 points
    return cand, base


def test_paired_bootstrap_detects_planted_drop():
    cand, base = _planted_drop(0)
    delta, (lo, hi), p = S.paired_bootstrap_delta(np.mean, (cand,), (base,), n_resamples=500)
    assert delta == pytest.approx(cand.mean() - base.mean())
    assert -0.12 < delta < -0.05 and lo < delta < hi < 0
    assert p < 0.01
    # Same data with roles swapped is an improvement: no drop.
    _, _, p_up = S.paired_bootstrap_delta(np.mean, (base,), (cand,), n_resamples=500)
    assert p_up > 0.5


def test_paired_bootstrap_does_not_flag_identical_inputs():
    logits = np.random.default_rng(1).normal(size=(300, 5))
    labels = np.random.default_rng(2).integers(0, 5, 300)
    delta, ci, p = S.paired_bootstrap_delta(M.top1_accuracy, (logits, labels), (logits, labels),
                                            n_resamples=300)
    assert delta == 0.0 and ci == (0.0, 0.0) and p == 1.0


def test_paired_bootstrap_lower_is_better_direction():
    rng = np.random.default_rng(3)
    loss_base = rng.exponential(size=400)
    loss_cand = loss_base + 0.2 + rng.normal(scale=0.1, size=400)  # worse: higher loss
    delta, (lo, hi), p = S.paired_bootstrap_delta(np.mean, (loss_cand,), (loss_base,),
                                                  n_resamples=300, higher_is_better=False)
    assert 0 < lo < delta < hi and p < 0.01


def test_paired_bootstrap_is_more_powerful_than_unpaired_for_correlated_items():
    # Per-item difficulty shared by both models: pairing cancels it, so the paired CI is narrow.
    cand, base = _planted_drop(4, n=400)
    _, (lo, hi), _ = S.paired_bootstrap_delta(np.mean, (cand,), (base,), n_resamples=300)
    lo_c, hi_c = S.bootstrap_ci(np.mean, cand, n_resamples=300)
    assert hi - lo < hi_c - lo_c


# ------------------------------------------------------------------------------ McNemar

# Hand table over 20 items: b = 2 (candidate right, baseline wrong), c = 8 (candidate wrong,
# baseline right), 10 concordant. delta = (2 - 8) / 20 = -0.3.
# One-sided (candidate worse): P(X <= 2 | X ~ Bin(10, 1/2)) = (1 + 10 + 45) / 1024 = 0.0546875.
# Two-sided: 2 * 0.0546875 = 0.109375. "greater": P(X >= 2) = 1 - 11/1024 = 1013/1024.
CAND = np.array([1] * 2 + [0] * 8 + [1] * 6 + [0] * 4, dtype=bool)
BASE = np.array([0] * 2 + [1] * 8 + [1] * 6 + [0] * 4, dtype=bool)


@pytest.mark.parametrize("alternative, expected, reference", [
    ("less", 56 / 1024, binom.cdf(2, 10, 0.5)),
    ("two-sided", 112 / 1024, 2 * binom.cdf(2, 10, 0.5)),
    ("greater", 1013 / 1024, binom.sf(1, 10, 0.5)),
])
def test_mcnemar_hand_table(alternative, expected, reference):
    delta, p = S.mcnemar_test(CAND, BASE, alternative=alternative)
    assert delta == pytest.approx(-0.3)
    assert p == pytest.approx(expected) and p == pytest.approx(reference)


def test_mcnemar_edge_cases():
    same = np.array([True, False, True])
    assert S.mcnemar_test(same, same) == (0.0, 1.0)  # no discordant pair: no evidence
    assert S.mcnemar_test([1, 0, 1], [1, 0, 1]) == (0.0, 1.0)  # 0/1 accepted
    with pytest.raises(ValueError, match="correct_candidate must hold booleans or 0/1"):
        S.mcnemar_test([0.5, 1.0], [1, 1])
    with pytest.raises(ValueError, match="same items"):
        S.mcnemar_test([1, 0], [1, 0, 1])
    with pytest.warns(UndefinedMetricWarning):
        assert all(math.isnan(v) for v in S.mcnemar_test([], []))


# ------------------------------------------------------------------------------ Wilson


def _wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval from its formula."""
    z = norm.ppf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k, n, confidence", [(7, 10, 0.95), (0, 25, 0.95), (25, 25, 0.9),
                                              (613, 1000, 0.99)])
def test_wilson_matches_formula(k, n, confidence):
    x = np.r_[np.ones(k, dtype=bool), np.zeros(n - k, dtype=bool)]
    np.testing.assert_allclose(S.proportion_ci(x, confidence=confidence),
                               _wilson(k, n, confidence), rtol=1e-9, atol=1e-12)


def test_wilson_textbook_value_and_empty():
    lo, hi = S.proportion_ci([1] * 7 + [0] * 3)
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)  # Wilson 95%, 7 of 10
    with pytest.warns(UndefinedMetricWarning):
        assert all(math.isnan(v) for v in S.proportion_ci(np.zeros(0, dtype=bool)))


# ------------------------------------------------------------------------------ seeds


def test_seed_for_definition():
    crc = zlib.crc32(b"tests/test_x.py::test_y")
    assert S.seed_for(5, "tests/test_x.py::test_y") == (5 + crc) % 2**32
    assert S.seed_for(0, "abc") == 891568578  # crc32("abc")
    assert S.seed_for(2**32 - 1, "abc") == 891568577  # wraps modulo 2**32
    assert S.seed_for(0, "a") != S.seed_for(0, "b")
    with pytest.raises(TypeError, match="key must be a str"):
        S.seed_for(0, b"abc")
    with pytest.raises(TypeError, match="global_seed must be an int"):
        S.seed_for("0", "abc")
