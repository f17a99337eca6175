"""Each metric of clip_robustness.plugins.metrics against an independent reference (sklearn, scipy, a hand-computed
case or a brute-force loop written here), plus hypothesis properties.

Where the implementation itself calls sklearn (AUROC, AUPR), the reference here is something
else: the Mann-Whitney U statistic, a hand case, or a loop written from the definition.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import special
from scipy.stats import mannwhitneyu, norm
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
    roc_curve,
)

from clip_robustness.plugins import metrics as M
from clip_robustness.plugins.metrics import UndefinedMetricWarning


def _classification_data(seed: int, n: int = 400, c: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, c))  # (N, C)
    labels = rng.integers(0, c, size=n)  # (N,)
    return logits, labels


# ------------------------------------------------------------------------------ classification


def test_top1_matches_sklearn_accuracy():
    logits, labels = _classification_data(0)
    assert M.top1_accuracy(logits, labels) == pytest.approx(
        accuracy_score(labels, logits.argmax(axis=1)))


def test_softmax_matches_definition_and_is_stable():
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    expected = np.exp(z / 2.0) / np.exp(z / 2.0).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(M.softmax(z, temperature=2.0), expected, rtol=1e-12)
    big = M.softmax([[1000.0, 999.0]])  # naive exp overflows here
    np.testing.assert_allclose(big, [[1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))]])
    with pytest.raises(ValueError, match="temperature"):
        M.softmax(z, temperature=0.0)


# ------------------------------------------------------------------------------ calibration

# Hand case, 2 classes, n_bins=5 (edges 0, .2, .4, .6, .8, 1; bin = (lower, upper]):
#   sample  probs       label  conf  correct  bin
#   1       [.9, .1]    0      .9    yes      (.8, 1]
#   2       [.8, .2]    1      .8    no       (.6, .8]   (.8 <= upper .8: boundary goes down)
#   3       [.3, .7]    1      .7    yes      (.6, .8]
#   4       [.4, .6]    1      .6    yes      (.4, .6]
#   bin (.8,1]: acc 1,  conf .9  -> |gap| .1,  weight 1/4 -> .025
#   bin (.6,.8]: acc .5, conf .75 -> |gap| .25, weight 2/4 -> .125
#   bin (.4,.6]: acc 1,  conf .6  -> |gap| .4,  weight 1/4 -> .100
#   ECE = .025 + .125 + .1 = .25 ; MCE = .4
HAND_PROBS = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
HAND_LABELS = np.array([0, 1, 1, 1])


def test_ece_and_mce_hand_case():
    assert M.expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=5) == pytest.approx(0.25)
    assert M.max_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=5) == pytest.approx(0.4)
    bins = M.calibration_bins(HAND_PROBS, HAND_LABELS, n_bins=5)
    assert bins["counts"].tolist() == [0, 0, 1, 2, 1]
    np.testing.assert_allclose(bins["accuracy"][2:], [1.0, 0.5, 1.0])
    np.testing.assert_allclose(bins["confidence"][2:], [0.6, 0.75, 0.9])
    assert np.isnan(bins["accuracy"][:2]).all()


def _ece_loop(probs: np.ndarray, labels: np.ndarray, edges: np.ndarray) -> float:
    """ECE written as the reference code's loop over bins (lower < conf <= upper)."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for lower, upper in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lower) & (conf <= upper)
        if in_bin.any():
            acc = (pred[in_bin] == labels[in_bin]).mean()
            total += in_bin.mean() * abs(acc - conf[in_bin].mean())
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_loop_reference(seed):
    logits, labels = _classification_data(seed)
    probs = special.softmax(logits, axis=1)
    assert M.expected_calibration_error(probs, labels) == pytest.approx(
        _ece_loop(probs, labels, np.linspace(0, 1, 16)), abs=1e-12)
    # Equal-mass bins: the same loop over quantile edges (outer edges at 0 and 1).
    edges = np.quantile(probs.max(axis=1), np.linspace(0, 1, 11))
    edges[0], edges[-1] = 0.0, 1.0
    assert M.adaptive_calibration_error(probs, labels, n_bins=10) == pytest.approx(
        _ece_loop(probs, labels, edges), abs=1e-12)
    counts = M.calibration_bins(probs, labels, n_bins=10, strategy="quantile")["counts"]
    assert counts.min() >= 39 and counts.max() <= 41  # equal mass (no ties in continuous data)


@pytest.mark.parametrize("seed", [0, 1])
def test_calibrated_data_has_small_ece(seed):
    # Labels drawn from the predicted probabilities: calibrated by construction.
    rng = np.random.default_rng(seed)
    n, c = 20000, 4
    probs = special.softmax(rng.normal(scale=2.0, size=(n, c)), axis=1)
    labels = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    assert M.expected_calibration_error(probs, labels) < 0.02
    # ...and a miscalibrated model (sharpened logits) does not pass.
    sharp = special.softmax(3 * special.logit(np.clip(probs, 1e-9, 1)), axis=1)
    assert M.expected_calibration_error(sharp, labels) > 0.1


def test_nll_matches_sklearn_log_loss():
    logits, labels = _classification_data(3)
    probs = special.softmax(logits, axis=1)
    assert M.negative_log_likelihood(probs, labels) == pytest.approx(
        log_loss(labels, probs, labels=list(range(5))), rel=1e-12)
    # Hand case: -(log .5 + log .75) / 2
    assert M.negative_log_likelihood([[0.5, 0.5], [0.25, 0.75]], [0, 1]) == pytest.approx(
        -(math.log(0.5) + math.log(0.75)) / 2)


def test_nll_clips_zero_probability_to_finite_value():
    value = M.negative_log_likelihood([[1.0, 0.0]], [1])
    assert value == pytest.approx(-math.log(np.finfo(np.float64).eps))


def test_brier_hand_case_and_sklearn():
    # (.1^2 + .1^2) = .02 and (.8^2 + .8^2) = 1.28 -> mean .65
    assert M.brier_score([[0.9, 0.1], [0.8, 0.2]], [0, 1]) == pytest.approx(0.65)
    rng = np.random.default_rng(4)
    p1 = rng.random(200)
    y = rng.integers(0, 2, 200)
    # Binary: ours scores both columns, sklearn's binary Brier only the positive class.
    assert M.brier_score(np.c_[1 - p1, p1], y) == pytest.approx(2 * brier_score_loss(y, p1))
    logits, labels = _classification_data(5)
    probs = special.softmax(logits, axis=1)
    assert M.brier_score(probs, labels) == pytest.approx(
        brier_score_loss(labels, probs, labels=list(range(5)), scale_by_half=False))


@pytest.mark.parametrize("planted", [0.5, 2.5])
def test_fit_temperature_recovers_planted_temperature(planted):
    rng = np.random.default_rng(6)
    true_logits = rng.normal(scale=3.0, size=(4000, 10))  # (N, C) calibrated by construction
    probs = special.softmax(true_logits, axis=1)
    labels = (rng.random(4000)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1).clip(max=9)
    t = M.fit_temperature(true_logits * planted, labels)
    assert t == pytest.approx(planted, rel=0.05)


def test_fit_temperature_warns_on_bound():
    logits = np.array([[5.0, 0.0], [0.0, 5.0]])  # separable: NLL keeps falling as T -> 0
    with pytest.warns(UserWarning, match="bound"):
        t = M.fit_temperature(logits, [0, 1], bounds=(0.5, 10.0))
    assert t == pytest.approx(0.5, rel=1e-3)


# ------------------------------------------------------------------------------ OOD scores


def test_ood_scores_match_definitions():
    rng = np.random.default_rng(7)
    cos = rng.uniform(-1, 1, size=(20, 6))
    z = rng.normal(scale=5.0, size=(20, 6))
    e = np.exp(cos / 0.3)
    np.testing.assert_allclose(M.mcm_score(cos, tau=0.3), (e / e.sum(1, keepdims=True)).max(1))
    ez = np.exp(z)
    np.testing.assert_allclose(M.msp_score(z), (ez / ez.sum(1, keepdims=True)).max(1))
    np.testing.assert_allclose(M.energy_score(z, temperature=2.0),
                               2.0 * np.log(np.exp(z / 2.0).sum(1)))
    np.testing.assert_array_equal(M.max_logit_score(z), z.max(1))


def test_mcm_rejects_scaled_logits():
    with pytest.raises(ValueError, match="cosine.*logit_scale"):
        M.mcm_score(100 * np.array([[0.3, 0.2]]))


# ------------------------------------------------------------------------------ OOD metrics


def _ood_data(seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s_in, s_out = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 170)
    if ties:  # coarse scores: many ties inside and across groups
        s_in, s_out = np.round(s_in), np.round(s_out)
    return s_in, s_out


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_matches_sklearn_and_mann_whitney(ties):
    s_in, s_out = _ood_data(8, ties)
    value = M.ood_auroc_score(s_in, s_out)
    u = mannwhitneyu(s_in, s_out).statistic  # U of the first sample, ties count 1/2
    assert value == pytest.approx(u / (s_in.size * s_out.size), abs=1e-12)
    y = np.r_[np.ones(s_in.size), np.zeros(s_out.size)]
    assert value == pytest.approx(roc_auc_score(y, np.r_[s_in, s_out]), abs=1e-12)


def test_auroc_hand_case():
    # pairs (in > out): .9 beats both, .8 beats both, .4 beats only .1 -> 5 of 6
    assert M.ood_auroc_score([0.9, 0.8, 0.4], [0.5, 0.1]) == pytest.approx(5 / 6)
    assert M.ood_auroc_score([1.0], [1.0]) == 0.5  # a tie counts one half


def _fpr_sweep(s_in: np.ndarray, s_out: np.ndarray, tpr: float) -> float:
    """Brute force: over every candidate threshold t (predict ID iff score >= t), the lowest FPR
    among thresholds whose TPR reaches `tpr`."""
    best = 1.0
    for t in np.unique(np.r_[s_in, s_out]):
        if np.mean(s_in >= t) >= tpr - 1e-12:
            best = min(best, float(np.mean(s_out >= t)))
    return best


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("tpr", [0.95, 0.8, 1.0])
def test_fpr_at_tpr_matches_sweep_and_roc_curve(ties, tpr):
    s_in, s_out = _ood_data(9, ties)
    value = M.fpr_at_tpr(s_in, s_out, tpr=tpr)
    assert value == pytest.approx(_fpr_sweep(s_in, s_out, tpr), abs=1e-12)
    fpr, tprs, _ = roc_curve(np.r_[np.ones(s_in.size), np.zeros(s_out.size)], np.r_[s_in, s_out],
                             drop_intermediate=False)
    assert value == pytest.approx(fpr[np.argmax(tprs >= tpr - 1e-12)], abs=1e-12)


def test_fpr_at_tpr_hand_case_with_ties():
    # ID scores 1..20: keeping 95% = 19 of 20 needs threshold 2.0 (the 19th largest).
    # OOD scores 2, 2 tie the threshold and count as ID -> 2 false positives of 4.
    assert M.fpr_at_tpr(np.arange(1.0, 21.0), [2.0, 2.0, 1.5, 0.0]) == 0.5
    assert M.fpr_at_tpr(np.arange(1.0, 21.0), [1.9, 1.5]) == 0.0


def _average_precision_loop(pos: np.ndarray, neg: np.ndarray) -> float:
    """AP = sum over distinct thresholds (descending) of (R_t - R_prev) * P_t."""
    ap, prev_recall = 0.0, 0.0
    for t in np.unique(np.r_[pos, neg])[::-1]:
        tp, fp = np.sum(pos >= t), np.sum(neg >= t)
        recall = tp / pos.size
        ap += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return ap


@pytest.mark.parametrize("ties", [False, True])
def test_aupr_matches_loop_and_sklearn(ties):
    s_in, s_out = _ood_data(10, ties)
    assert M.aupr_in_score(s_in, s_out) == pytest.approx(_average_precision_loop(s_in, s_out))
    assert M.aupr_out_score(s_in, s_out) == pytest.approx(_average_precision_loop(-s_out, -s_in))
    y = np.r_[np.ones(s_in.size), np.zeros(s_out.size)]
    assert M.aupr_in_score(s_in, s_out) == pytest.approx(
        average_precision_score(y, np.r_[s_in, s_out]))


def test_aupr_hand_case():
    # ID positive, ranking .9(in) .8(in) .5(out) .4(in) .1(out): precisions at the ID hits
    # 1, 1, 3/4 -> AP = (1 + 1 + .75) / 3. OOD positive, ranking by -score: .1(out) first
    # (precision 1), then .4(in), .5(out) (precision 2/3) -> AP = (1 + 2/3) / 2.
    assert M.aupr_in_score([0.9, 0.8, 0.4], [0.5, 0.1]) == pytest.approx(2.75 / 3)
    assert M.aupr_out_score([0.9, 0.8, 0.4], [0.5, 0.1]) == pytest.approx(5 / 6)


score_lists = st.lists(st.integers(-6, 6), min_size=1, max_size=25).map(
    lambda v: np.asarray(v, dtype=np.float64))
MONOTONE = {"affine": lambda s: 3.0 * s + 7.0, "exp": lambda s: np.exp(s / 3.0),
            "arctan": np.arctan, "cube": lambda s: s ** 3}
SCORE_FUNCS = {"auroc": M.ood_auroc_score, "fpr95": M.fpr_at_tpr,
               "aupr_in": M.aupr_in_score, "aupr_out": M.aupr_out_score}


@given(s_in=score_lists, s_out=score_lists, transform=st.sampled_from(sorted(MONOTONE)))
@pytest.mark.parametrize("name", sorted(SCORE_FUNCS))
def test_score_metrics_invariant_to_monotone_transforms(name, s_in, s_out, transform):
    f, g = SCORE_FUNCS[name], MONOTONE[transform]
    assert f(g(s_in), g(s_out)) == pytest.approx(f(s_in, s_out), abs=1e-12), name


@given(s_in=score_lists, s_out=score_lists)
def test_auroc_equals_mann_whitney_property(s_in, s_out):
    u = mannwhitneyu(s_in, s_out).statistic
    assert M.ood_auroc_score(s_in, s_out) == pytest.approx(u / (s_in.size * s_out.size))


@given(s_in=score_lists, s_out=score_lists, tpr=st.sampled_from([0.5, 0.8, 0.9, 0.95, 1.0]))
def test_fpr_at_tpr_equals_sweep_property(s_in, s_out, tpr):
    # Small, tie-heavy inputs where tpr * N is rarely an integer (e.g. 0.95 * 7).
    assert M.fpr_at_tpr(s_in, s_out, tpr=tpr) == pytest.approx(_fpr_sweep(s_in, s_out, tpr))


@given(s_in=score_lists, s_out=score_lists)
def test_aupr_equals_loop_property(s_in, s_out):
    assert M.aupr_in_score(s_in, s_out) == pytest.approx(_average_precision_loop(s_in, s_out))
    assert M.aupr_out_score(s_in, s_out) == pytest.approx(_average_precision_loop(-s_out, -s_in))


# ------------------------------------------------------------------------------ retrieval


def test_recall_at_k_hand_case_with_pessimistic_ties():
    # Query 0: positive item 1 scores .5; items 0 (.9) and 2 (.5, a tie) rank above it -> rank 3.
    # Query 1: best positive item 2 (.3) beats the only negative (.2) -> rank 1.
    sim = np.array([[0.9, 0.5, 0.5], [0.1, 0.2, 0.3]])
    sets = [{1}, {0, 2}]
    matrix = np.array([[False, True, False], [True, False, True]])
    for positives in (sets, matrix):
        assert [M.recall_at_k(sim, positives, k=k) for k in (1, 2, 3)] == [0.5, 0.5, 1.0]


def test_retrieval_recalls_match_argsort_reference():
    rng = np.random.default_rng(11)
    n_img, per = 30, 5
    img = rng.normal(size=(n_img, 16))
    owner = np.repeat(np.arange(n_img), per)  # 5 captions per image
    txt = img[owner] + rng.normal(scale=1.5, size=(n_img * per, 16))
    got = M.retrieval_recalls(img, txt, owner)
    sim = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (
        txt / np.linalg.norm(txt, axis=1, keepdims=True)).T  # (N, M)
    order_i2t = np.argsort(-sim, axis=1)  # continuous data: no ties
    order_t2i = np.argsort(-sim.T, axis=1)
    for k in (1, 5, 10):
        i2t = np.mean([np.isin(order_i2t[i, :k], np.flatnonzero(owner == i)).any()
                       for i in range(n_img)])
        t2i = np.mean([owner[j] in order_t2i[j, :k] for j in range(owner.size)])
        assert got[f"i2t_r{k}"] == pytest.approx(i2t), k
        assert got[f"t2i_r{k}"] == pytest.approx(t2i), k
    assert 0 < got["t2i_r1"] < got["t2i_r10"] < 1  # the case is not trivial


def test_retrieval_requires_captions_for_every_image():
    with pytest.raises(ValueError, match="image 1 has no caption"):
        M.retrieval_recalls(np.eye(3), np.eye(3)[[0, 0, 2]], [0, 0, 2])


def test_modality_gap_hand_case():
    # normalised image centroid (1, 0); text centroid (0, 1) -> sqrt(2)
    assert M.modality_gap([[1.0, 0.0], [3.0, 0.0]], [[0.0, 2.0]]) == pytest.approx(math.sqrt(2))
    assert M.modality_gap([[1.0, 1.0]], [[2.0, 2.0]]) == pytest.approx(0.0)


# ------------------------------------------------------------------------------ shape bias, factors


def test_shape_bias_hand_case():
    # Items 2 (shape 1 == texture 1) and 5 (5 == 5) are dropped, N = 4 remain:
    # items 0, 1, 3 are predicted as their shape (0, 1, 3); item 4 as its texture (0)
    got = M.shape_bias_score([0, 1, 2, 3, 0, 5], [0, 1, 1, 3, 4, 5], [1, 2, 1, 0, 0, 5])
    assert got == {"shape_bias": 0.75, "shape_fraction": 0.75, "texture_fraction": 0.25}
    # Strings work; a prediction matching neither lowers the fractions but not the bias.
    got = M.shape_bias_score(["cat", "dog", "car"], ["cat", "cat", "cat"], ["dog", "dog", "dog"])
    assert got == {"shape_bias": 0.5, "shape_fraction": 1 / 3, "texture_fraction": 1 / 3}


def test_shape_bias_undefined_without_decisions():
    with pytest.warns(UndefinedMetricWarning, match="neither|either"):
        got = M.shape_bias_score([7, 7], [0, 1], [1, 0])
    assert math.isnan(got["shape_bias"]) and got["shape_fraction"] == 0.0


def test_shape_bias_rejects_mixed_label_types():
    with pytest.raises(TypeError, match="same label type"):
        M.shape_bias_score(["cat"], [0], [1])


def test_consistency_and_error_ratio_hand_cases():
    assert M.consistency_rate([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert M.error_ratio(0.6, 0.8) == pytest.approx(2.0)  # .4 / .2
    np.testing.assert_allclose(M.error_ratio([0.6, 0.9], 0.8), [2.0, 0.5])
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(M.error_ratio(0.5, 1.0))


def test_effective_robustness_hand_case():
    # Probit coordinates x = (0, 1, 2), y = (-1, 0, 1): slope 1, intercept -1.
    fit = M.fit_effective_robustness(norm.cdf([0.0, 1.0, 2.0]), norm.cdf([-1.0, 0.0, 1.0]))
    assert (fit.slope, fit.intercept) == (pytest.approx(1.0), pytest.approx(-1.0))
    # A model with ID accuracy Phi(1) is predicted at Phi(0) = 0.5; at 0.6 it is 0.1 above.
    assert M.effective_robustness(fit, norm.cdf(1.0), 0.6) == pytest.approx(0.1)


@pytest.mark.parametrize("transform", ["probit", "logit", "linear"])
def test_effective_robustness_fit_matches_polyfit(transform):
    rng = np.random.default_rng(12)
    id_acc = rng.uniform(0.3, 0.9, 12)
    shifted = np.clip(id_acc - 0.2 + rng.normal(scale=0.03, size=12), 0, 1)
    fwd = {"probit": norm.ppf, "logit": special.logit, "linear": lambda p: p}[transform]
    slope, intercept = np.polyfit(fwd(id_acc), fwd(shifted), deg=1)
    fit = M.fit_effective_robustness(id_acc, shifted, transform=transform)
    assert (fit.slope, fit.intercept) == (pytest.approx(slope), pytest.approx(intercept))
    inverse = {"probit": norm.cdf, "logit": special.expit, "linear": lambda v: v}[transform]
    np.testing.assert_allclose(M.effective_robustness(fit, id_acc, shifted),
                               shifted - inverse(slope * fwd(id_acc) + intercept), atol=1e-12)


def test_effective_robustness_model_count_rules():
    with pytest.raises(ValueError, match="at least 2"):
        M.fit_effective_robustness([0.5], [0.4])
    with pytest.warns(UserWarning, match=">= 3"):
        fit = M.fit_effective_robustness([0.5, 0.7], [0.4, 0.5])
    assert M.effective_robustness(fit, np.array([0.5, 0.7]), np.array([0.4, 0.5])) == \
        pytest.approx([0.0, 0.0], abs=1e-12)
    with pytest.warns(UndefinedMetricWarning):
        fit = M.fit_effective_robustness([0.5, 0.5, 0.5], [0.4, 0.5, 0.3])
    assert math.isnan(fit.slope)


# ------------------------------------------------------------------------------ corruptions


def test_corruption_metrics_hand_cases():
    err = [[0.2, 0.4], [0.5, 0.5]]  # (F=2, S=2)
    ref = [[0.4, 0.4], [0.5, 1.0]]
    # family 1: .6 / .8 = .75 ; family 2: 1.0 / 1.5 = 2/3 ; mean = .708333
    assert M.mean_corruption_error(err, ref) == pytest.approx((0.75 + 2 / 3) / 2)
    # clean errors .1 (model) and .2 (reference), subtracted once per severity:
    # family 1: (.6 - .2) / (.8 - .4) = 1 ; family 2: (1.0 - .2) / (1.5 - .4) = 8/11
    assert M.relative_mce(err, ref, 0.1, 0.2) == pytest.approx((1 + 8 / 11) / 2)
    assert M.relative_accuracy(0.6, 0.75) == pytest.approx(0.8)
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(M.mean_corruption_error(err, [[0.0, 0.0], [0.5, 0.5]]))


def test_correspondence_recall_hand_case():
    pred = [[0, 0], [3, 4], [1, 1], [10, 10]]
    true = [[0, 0], [0, 0], [1, 2], [10, 12]]  # errors 0, 5, 1, 2
    # strict "error < t": t=1 -> {0}; t=2 -> {0, 1}; t=5.5 -> all
    assert M.correspondence_recall(pred, true, thresholds=(1, 2, 5.5)) == {
        1.0: 0.25, 2.0: 0.5, 5.5: 1.0}


# ------------------------------------------------------------------------------ bad input

DEGENERATE = {
    "top1_empty": lambda: M.top1_accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int)),
    "ece_empty": lambda: M.expected_calibration_error(np.zeros((0, 3)), np.zeros(0, dtype=int)),
    "nll_empty": lambda: M.negative_log_likelihood(np.zeros((0, 3)), np.zeros(0, dtype=int)),
    "brier_empty": lambda: M.brier_score(np.zeros((0, 3)), np.zeros(0, dtype=int)),
    "temperature_empty": lambda: M.fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)),
    "auroc_no_ood": lambda: M.ood_auroc_score([0.1, 0.2], []),
    "auroc_no_id": lambda: M.ood_auroc_score([], [0.3]),
    "fpr95_no_ood": lambda: M.fpr_at_tpr([0.1, 0.2], []),
    "aupr_in_no_ood": lambda: M.aupr_in_score([0.1, 0.2], []),
    "aupr_out_no_id": lambda: M.aupr_out_score([], [0.1]),
    "recall_no_queries": lambda: M.recall_at_k(np.zeros((0, 4)), np.zeros((0, 4), bool), k=1),
    "modality_gap_empty": lambda: M.modality_gap(np.zeros((0, 2)), [[1.0, 0.0]]),
    "shape_bias_no_conflict": lambda: M.shape_bias_score([0, 1], [0, 1], [0, 1])["shape_bias"],
    "consistency_empty": lambda: M.consistency_rate([], []),
    "relative_top1_zero_clean": lambda: M.relative_accuracy(0.0, 0.0),
    "correspondence_empty": lambda: M.correspondence_recall(np.zeros((0, 2)),
                                                            np.zeros((0, 2)))[1.0],
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_input_warns_and_returns_nan(case):
    with pytest.warns(UndefinedMetricWarning):
        value = DEGENERATE[case]()
    assert math.isnan(value), f"{case} returned {value!r} instead of nan"


def test_retrieval_empty_returns_nan_dict():
    with pytest.warns(UndefinedMetricWarning):
        got = M.retrieval_recalls(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, int), ks=(1,))
    assert set(got) == {"i2t_r1", "t2i_r1"} and all(math.isnan(v) for v in got.values())


# Functions outside the registry (the registry ones are covered by test_metric_contract.py):
# poison one float argument with nan or inf and expect a ValueError naming it.
NON_FINITE = {
    "softmax": (M.softmax, lambda v: ([[0.0, v]],), "logits"),
    "mcm_score": (M.mcm_score, lambda v: ([[0.1, v]],), "cosine"),
    "msp_score": (M.msp_score, lambda v: ([[0.0, v]],), "logits"),
    "energy_score": (M.energy_score, lambda v: ([[0.0, v]],), "logits"),
    "max_logit_score": (M.max_logit_score, lambda v: ([[0.0, v]],), "logits"),
    "calibration_bins": (M.calibration_bins, lambda v: ([[0.5, v]], [0]), "probs"),
    "fit_temperature_labels": (M.fit_temperature, lambda v: ([[0.0, 1.0]], [v]), "labels"),
    "top1_labels": (M.top1_accuracy, lambda v: ([[0.0, 1.0]], [v]), "labels"),
    "relative_mce": (M.relative_mce, lambda v: ([[0.1]], [[0.2]], v, 0.1), "clean_err_model"),
    "fit_effective_robustness": (M.fit_effective_robustness,
                                 lambda v: ([0.1, 0.2, v], [0.1, 0.2, 0.3]), "id_acc"),
}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("case", sorted(NON_FINITE))
def test_non_finite_input_names_the_argument(case, value):
    func, make_args, name = NON_FINITE[case]
    with pytest.raises(ValueError, match=name):
        func(*make_args(value))


@pytest.mark.parametrize("call, message", [
    (lambda: M.expected_calibration_error([0.2, 0.8], [1]),
     r"expected probs of shape \(N, C\), got \(2,\)"),
    (lambda: M.expected_calibration_error([[2.0, -1.0]], [0]), "Pass softmax"),
    (lambda: M.brier_score([[0.2, 0.7]], [0]), "sum to 1"),
    (lambda: M.top1_accuracy([[0.2, 0.8]], [2]), r"labels must lie in \[0, 2\)"),
    (lambda: M.top1_accuracy([[0.2, 0.8]], [0, 1]), "labels has 2 entries"),
    (lambda: M.top1_accuracy([[0.2, 0.8]], [0.5]), "integer"),
    (lambda: M.recall_at_k([[0.1, 0.2]], [set()], k=1), "no positive"),
    (lambda: M.recall_at_k([[0.1, 0.2]], [{0}], k=0), "k must be a positive integer"),
    (lambda: M.fpr_at_tpr([0.1], [0.2], tpr=1.5), r"tpr must be in \(0, 1\]"),
    (lambda: M.error_ratio(60, 0.8), "percent"),
    (lambda: M.modality_gap([[0.0, 0.0]], [[1.0, 0.0]]), "image_emb row 0 has zero norm"),
    (lambda: M.mean_corruption_error([0.1, 0.2], [0.1, 0.2]), r"\(F, S\)"),
    (lambda: M.calibration_bins([[0.5, 0.5]], [0], strategy="kmeans"), "strategy must be one of"),
])
def test_bad_input_messages_echo_what_was_received(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_metric_info_suggests_close_names():
    assert M.metric_info("fpr95").higher_is_better is False
    with pytest.raises(KeyError, match="Did you mean 'ece'.*Available: .*top1"):
        M.metric_info("eec")
