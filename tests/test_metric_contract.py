"""Contract tests over the whole METRICS registry (STYLE principle 16).

Every registered metric must: declare direction and bounds; have a running doctest; take no
**kwargs and keyword-only options; stay within its bounds on canonical inputs; accept lists like
arrays; reject NaN/inf with a ValueError naming the argument; and satisfy the invariances of the
property sets below. ``test_property_sets_cover_every_callable_metric`` makes a new metric fail
until it is placed in those sets and given canonical inputs in ``CASES``. The property registry
(clip_robustness.plugins.properties) is read too: every headline metric it names is registered, and every
metric's ``recompute`` (how a baseline comparison recomputes it from per-sample arrays) agrees with the
metric itself.
"""

from __future__ import annotations

import doctest
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from clip_robustness.plugins import metrics as M
from clip_robustness.plugins.properties import PROPERTIES

REGISTRY_FUNCTIONS = {"metric_info", "register_metric"}  # read or extend METRICS; no data, so no validate=
CALLABLE = sorted(name for name, info in M.METRICS.items() if info.func is not None)

# --- property sets: every callable metric is in exactly one of the first three -----------------
# Value unchanged when the items (samples, models, families, queries) are reordered.
PERMUTATION_INVARIANT = {
    "top1", "ece", "aece", "mce", "nll", "brier", "auroc", "fpr95", "aupr_in", "aupr_out",
    "shape_bias", "shape_fraction", "texture_fraction", "consistency", "mce_corruption",
    "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "modality_gap",
    "correspondence_recall", "temperature",
}
# Per-item output that is reordered with the items.
PERMUTATION_EQUIVARIANT = {"effective_robustness"}
# Scalar accuracies in, no item axis: checked for range validation and broadcasting instead.
NO_ITEM_AXIS = {"error_ratio", "relative_top1"}
# Further properties, each a subset of the callable metrics:
SCORE_METRICS = {"auroc", "fpr95", "aupr_in", "aupr_out"}  # invariant to monotone transforms
PROB_METRICS = {"ece", "aece", "mce", "nll", "brier"}  # reject rows that do not sum to 1


def _joint(args: tuple, rng: np.random.Generator) -> tuple:
    """Permute axis 0 of every array argument with one shared permutation."""
    n = next(a.shape[0] for a in args if isinstance(a, np.ndarray))
    perm = rng.permutation(n)
    return tuple(a[perm] if isinstance(a, np.ndarray) else a for a in args)


def _each(args: tuple, rng: np.random.Generator) -> tuple:
    """Permute every array argument on its own (independent groups, e.g. ID and OOD scores)."""
    return tuple(a[rng.permutation(a.shape[0])] for a in args)


def _retrieval(args: tuple, rng: np.random.Generator) -> tuple:
    """Reorder images and captions independently and remap caption -> image ids."""
    img, txt, owner = args
    perm_img, perm_txt = rng.permutation(img.shape[0]), rng.permutation(txt.shape[0])
    new_id = np.argsort(perm_img)  # old image id -> position after permutation
    return img[perm_img], txt[perm_txt], new_id[owner[perm_txt]]


@dataclass
class Case:
    args: tuple
    permute: Callable[[tuple, np.random.Generator], tuple] = _joint
    rtol: float = 1e-12
    kwargs: dict[str, Any] = field(default_factory=dict)


def _build_cases() -> dict[str, Case]:
    rng = np.random.default_rng(2024)
    n, c = 300, 6
    logits = rng.normal(scale=2.0, size=(n, c))  # (N, C)
    labels = rng.integers(0, c, n)  # (N,)
    probs = special.softmax(logits, axis=1)  # (N, C)
    scores = (rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 150))  # (N,), (M,)
    cue = (rng.integers(0, 16, 200), rng.integers(0, 16, 200), rng.integers(0, 16, 200))
    img = rng.normal(size=(40, 8))  # (N, D)
    owner = np.repeat(np.arange(40), 5)  # (M,) 5 captions per image
    txt = img[owner] + rng.normal(scale=1.0, size=(200, 8))  # (M, D)
    id_acc = rng.uniform(0.4, 0.9, 8)  # (models,)
    shifted = np.clip(id_acc - 0.25 + rng.normal(scale=0.03, size=8), 0, 1)
    fit = M.fit_effective_robustness(id_acc[:5], shifted[:5])
    err, ref = rng.uniform(0.2, 0.8, (5, 5)), rng.uniform(0.3, 0.9, (5, 5))  # (F, S)
    pts = rng.uniform(0, 64, (100, 2))  # (K, 2)
    cases = {
        "top1": Case((logits, labels)),
        **{name: Case((probs, labels)) for name in PROB_METRICS},
        **{name: Case(scores, permute=_each) for name in SCORE_METRICS},
        **{name: Case(cue) for name in ("shape_bias", "shape_fraction", "texture_fraction")},
        "consistency": Case(cue[:2]),
        "error_ratio": Case((0.6, 0.8)),
        "relative_top1": Case((0.6, 0.75)),
        "effective_robustness": Case((fit, id_acc, shifted)),
        "mce_corruption": Case((err, ref)),
        **{f"{d}_r{k}": Case((img, txt, owner), permute=_retrieval)
           for d in ("i2t", "t2i") for k in (1, 5, 10)},
        "modality_gap": Case((img, txt), permute=_each, rtol=1e-9),
        "correspondence_recall": Case((pts, pts + rng.normal(scale=2.0, size=(100, 2)))),
        "temperature": Case((logits, labels), rtol=1e-4),  # optimiser tolerance
    }
    return cases


CASES = _build_cases()


def _value(name: str, args: tuple, kwargs: dict[str, Any] | None = None) -> Any:
    info = M.METRICS[name]
    out = info.func(*args, **(kwargs or {}))
    return out[info.key] if info.key else out


def _assert_close(name: str, got: Any, want: Any, rtol: float) -> None:
    if isinstance(want, dict):
        assert got.keys() == want.keys(), name
        for key in want:
            _assert_close(f"{name}[{key}]", got[key], want[key], rtol)
        return
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-12, err_msg=name)


# ----------------------------------------------------------------------------- registry shape


@pytest.mark.parametrize("prop", sorted(PROPERTIES))
def test_every_headline_metric_of_a_property_is_registered(prop):
    """The report's summary cell of a property shows its headline metric, whose direction comes from METRICS."""
    unknown = [m for m in PROPERTIES[prop].headline if m not in M.METRICS]
    assert PROPERTIES[prop].headline and not unknown, f"{prop}: headline metrics {unknown} are not in METRICS"


def _samples(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-sample arrays of every kind a row may carry (docs/architecture.md, "Per-sample files")."""
    n, c = 120, 5
    labels = rng.integers(0, c, n)  # (N,)
    logits = rng.normal(scale=2.0, size=(n, c)) + 2.0 * np.eye(c)[labels]  # (N, C), better than chance
    return {"logits": logits.astype(np.float32), "labels": labels,
            "canonical_logits": (logits + rng.normal(size=(n, c))).astype(np.float32),  # (N, C)
            "texture_labels": (labels + rng.integers(1, c, n)) % c,  # (N,), never the shape class
            "scores_in": rng.normal(1.0, 1.0, 90).astype(np.float32),  # (N,)
            "scores_out": rng.normal(size=70).astype(np.float32)}  # (M,)


def _recorded(name: str, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], float]:
    """Per-sample arrays as the property records them beside a metric whose value is a statistic of per-item
    (per-scene) outcomes, and the metric computed from the underlying data by its registered function (or its
    definition written out): the recipe must give the same number from the arrays alone."""
    if name == "relative_top1":  # corrupted and clean correctness of the same items
        correct, clean = (rng.random(80) < p for p in (0.5, 0.8))
        return ({"correct": correct.astype(float), "clean_correct": clean.astype(float)},
                M.METRICS[name].func(correct.mean(), clean.mean()))
    if name == "lmm_gain":  # LMM and CLIP correctness of the same items
        lmm, clip = (rng.random(60) < p for p in (0.7, 0.6))
        return {"lmm_correct": lmm.astype(float), "clip_correct": clip.astype(float)}, lmm.mean() - clip.mean()
    if M.METRICS[name].func is M.retrieval_recalls:  # per-image hits of robustness_tests/test_retrieval.py
        from clip_robustness.fixtures.retrieval_data import retrieval_hits

        img = rng.normal(size=(40, 8))  # (N, D)
        txt = np.repeat(img, 5, axis=0) + rng.normal(scale=1.0, size=(200, 8))  # (N * 5, D), image-major
        return ({"hits": retrieval_hits(img, txt, 5)[name]},
                M.retrieval_recalls(img, txt, np.repeat(np.arange(40), 5))[name])
    # multiview: per-scene sums of fixtures.multiview.score_pairs over view pairs of 12 scenes
    from clip_robustness.fixtures.multiview import ViewPair, score_pairs

    pairs = []
    for scene in range(12):
        for _ in range(int(rng.integers(1, 3))):
            k = int(rng.integers(5, 30))
            true = rng.uniform(0, 64, (k, 2))  # (K, 2)
            pairs.append(ViewPair(scene, 100.0, true + rng.normal(scale=6.0, size=(k, 2)), true,
                                  rng.uniform(0, 64, (50, 2)), true + rng.normal(scale=8.0, size=(k, 2))))
    threshold = 8.0
    scores = score_pairs(pairs, threshold, seed=0)

    def recall(field: str) -> float:
        points = np.concatenate([getattr(p, field) for p in pairs])  # (K, 2) over every pair
        return M.correspondence_recall(points, np.concatenate([p.true for p in pairs]), thresholds=(threshold,))[
            threshold]

    want = recall("predicted") - (recall("same_position") if name == "correspondence_gain" else 0.0)
    assert (scores.gain if name == "correspondence_gain" else scores.recall) == pytest.approx(want, rel=1e-12)
    return scores.per_scene, want


# metrics whose rows keep per-item (per-scene) outcomes rather than logits or scores
OUTCOME_RECOMPUTED = {"relative_top1", "lmm_gain", "correspondence_recall", "correspondence_gain",
                      *(f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10))}


def _reference(name: str, s: dict[str, np.ndarray]) -> float:
    """The metric computed the way a test records it: its registered function on the arrays it was given
    (scipy's softmax for the probabilities), or, for a derived metric, its definition written out."""
    info = M.METRICS[name]
    if name == "accuracy_drop":  # clean accuracy minus accuracy under the condition
        return float(np.mean(s["canonical_logits"].argmax(1) == s["labels"])
                     - np.mean(s["logits"].argmax(1) == s["labels"]))
    if name == "consistency":
        return info.func(s["canonical_logits"].argmax(1), s["logits"].argmax(1))
    if info.key is not None and info.func is M.shape_bias_score:
        return info.func(s["logits"].argmax(1), s["labels"], s["texture_labels"])[info.key]
    if info.recompute[0] == M.OOD_SAMPLES:
        return info.func(s["scores_in"], s["scores_out"])
    probs = special.softmax(s["logits"].astype(np.float64), axis=1)  # (N, C)
    return info.func(s["logits"] if name == "top1" else probs, s["labels"])


RECOMPUTED = sorted(name for name, info in M.METRICS.items() if info.recompute is not None)


def test_recompute_is_declared_for_the_metrics_recorded_with_samples():
    """Rows of these metrics carry per-sample arrays, so a baseline comparison of them is paired; losing a
    recompute would silently make it unpaired."""
    recorded_with_samples = {"top1", "ece", "aece", "mce", "nll", "brier", "auroc", "fpr95", "aupr_in", "aupr_out",
                             "shape_bias", "shape_fraction", "texture_fraction", "consistency", "accuracy_drop"}
    assert recorded_with_samples | OUTCOME_RECOMPUTED <= set(RECOMPUTED)


@pytest.mark.parametrize("name", RECOMPUTED)
def test_recompute_from_samples_equals_the_metric(name):
    keys, statistic = M.METRICS[name].recompute
    rng = np.random.default_rng(7)
    samples, want = _recorded(name, rng) if name in OUTCOME_RECOMPUTED else (_samples(rng), None)
    assert set(keys) <= set(samples), f"{name}: recompute reads {keys}, not all documented sample kinds"
    got = statistic(*(samples[k] for k in keys))
    np.testing.assert_allclose(got, _reference(name, samples) if want is None else want, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", sorted(M.METRICS))
def test_entry_declares_direction_and_bounds(name):
    info = M.METRICS[name]
    assert info.name == name, f"{name}: entry is named {info.name!r}"
    assert isinstance(info.higher_is_better, bool), f"{name}: higher_is_better is not a bool"
    assert info.lower_bound < info.upper_bound, (
        f"{name}: bounds {info.lower_bound}, {info.upper_bound}")
    assert isinstance(info.description, str) and info.description, f"{name}: no description"
    assert info.func is None or callable(info.func), f"{name}: func is not callable"
    assert info.key is None or info.func is not None, f"{name}: key without func"


def test_property_sets_cover_every_callable_metric():
    partition = [PERMUTATION_INVARIANT, PERMUTATION_EQUIVARIANT, NO_ITEM_AXIS]
    covered = set().union(*partition)
    assert covered == set(CALLABLE), (
        f"metrics not placed in a property set: {sorted(set(CALLABLE) - covered)}; "
        f"unknown names in the sets: {sorted(covered - set(CALLABLE))}")
    assert sum(len(s) for s in partition) == len(covered), "a metric is in two exclusive sets"
    assert set(CASES) == set(CALLABLE), (
        f"metrics without canonical inputs in CASES: {sorted(set(CALLABLE) - set(CASES))}")
    for subset in (SCORE_METRICS, PROB_METRICS):
        assert subset <= set(CALLABLE), sorted(subset - set(CALLABLE))


# ----------------------------------------------------------------------------- doctests, signatures

PUBLIC_FUNCTIONS = sorted(n for n in M.__all__ if inspect.isfunction(getattr(M, n)))


def test_module_doctests_pass():
    result = doctest.testmod(M, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


@pytest.mark.parametrize("name", PUBLIC_FUNCTIONS)
def test_every_public_function_has_a_passing_doctest(name):
    tests = [t for t in doctest.DocTestFinder().find(M) if t.name == f"{M.__name__}.{name}"]
    assert tests and tests[0].examples, f"{name} has no doctest example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(tests[0])
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, f"{name}: {result}"


@pytest.mark.parametrize("name", sorted({n for n in PUBLIC_FUNCTIONS} | {
    M.METRICS[m].func.__name__ for m in CALLABLE}))
def test_signature_has_keyword_only_options_and_no_var_kwargs(name):
    params = inspect.signature(getattr(M, name)).parameters.values()
    kinds = {p.name: p.kind for p in params}
    assert inspect.Parameter.VAR_KEYWORD not in kinds.values(), f"{name} takes **kwargs"
    assert inspect.Parameter.VAR_POSITIONAL not in kinds.values(), f"{name} takes *args"
    positional_defaults = [p.name for p in params
                           if p.default is not p.empty and p.kind != p.KEYWORD_ONLY]
    assert not positional_defaults, f"{name}: options {positional_defaults} are not keyword-only"
    if name not in REGISTRY_FUNCTIONS:
        assert kinds.get("validate") == inspect.Parameter.KEYWORD_ONLY, f"{name}: no validate="


# ----------------------------------------------------------------------------- shared invariances


@pytest.mark.parametrize("name", CALLABLE)
def test_value_within_declared_bounds(name):
    info, case = M.METRICS[name], CASES[name]
    out = _value(name, case.args, case.kwargs)
    values = np.ravel(list(out.values()) if isinstance(out, dict) else out)
    assert values.size and np.isfinite(values).all(), f"{name}: {out}"
    assert (values >= info.lower_bound).all() and (values <= info.upper_bound).all(), (
        f"{name}={out} outside [{info.lower_bound}, {info.upper_bound}]")


@pytest.mark.parametrize("name", sorted(PERMUTATION_INVARIANT))
@settings(max_examples=8)
@given(seed=st.integers(0, 2**32 - 1))
def test_permutation_invariance(name, seed):
    case = CASES[name]
    shuffled = case.permute(case.args, np.random.default_rng(seed))
    _assert_close(name, _value(name, shuffled, case.kwargs), _value(name, case.args, case.kwargs),
                  case.rtol)


@pytest.mark.parametrize("name", sorted(PERMUTATION_EQUIVARIANT))
@settings(max_examples=8)
@given(seed=st.integers(0, 2**32 - 1))
def test_permutation_equivariance(name, seed):
    case = CASES[name]
    fit, x, y = case.args
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    _assert_close(name, _value(name, (fit, x[perm], y[perm])), _value(name, case.args)[perm],
                  case.rtol)


@pytest.mark.parametrize("name", CALLABLE)
def test_lists_give_the_same_value_as_arrays(name):
    case = CASES[name]
    as_lists = tuple(a.tolist() if isinstance(a, np.ndarray) else a for a in case.args)
    _assert_close(name, _value(name, as_lists, case.kwargs), _value(name, case.args, case.kwargs),
                  case.rtol)


def _poison_cases() -> list[tuple[str, int, str]]:
    """(metric, argument index, parameter name) for every numeric argument of every case."""
    out = []
    for name in CALLABLE:
        params = list(inspect.signature(M.METRICS[name].func).parameters)
        for i, arg in enumerate(CASES[name].args):
            numeric = isinstance(arg, float) or (
                isinstance(arg, np.ndarray) and arg.dtype.kind in "iuf")
            if numeric:
                out.append((name, i, params[i]))
    return out


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("name, index, param", _poison_cases())
def test_non_finite_input_raises_value_error_naming_the_argument(name, index, param, value):
    args = list(CASES[name].args)
    if isinstance(args[index], np.ndarray):
        poisoned = args[index].astype(np.float64)  # integer labels too: as floats holding nan
        poisoned.flat[0] = value
        args[index] = poisoned
    else:
        args[index] = value
    with pytest.raises(ValueError, match=param):
        _value(name, tuple(args), CASES[name].kwargs)


# ----------------------------------------------------------------------------- per-set properties


@pytest.mark.parametrize("name", sorted(SCORE_METRICS))
def test_score_metrics_invariant_to_monotone_transform(name):
    s_in, s_out = CASES[name].args
    _assert_close(name, _value(name, (np.exp(s_in / 2), np.exp(s_out / 2))),
                  _value(name, (s_in, s_out)), 1e-12)


@pytest.mark.parametrize("name", sorted(PROB_METRICS))
def test_prob_metrics_reject_logits(name):
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match="Pass softmax"):
        _value(name, (logits, np.array([0, 2])))


@pytest.mark.parametrize("name", sorted(NO_ITEM_AXIS))
def test_scalar_metrics_validate_range_and_broadcast(name):
    a, b = CASES[name].args
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _value(name, (a * 100, b))
    batch = np.array([a, a / 2, 1.0])
    np.testing.assert_allclose(_value(name, (batch, b)),
                               [_value(name, (float(v), b)) for v in batch], err_msg=name)


def test_register_metric_refuses_another_function_under_a_taken_name():
    """A project's entry that computes a built-in metric differently must not replace it (the regression
    comparison recomputes through it); the same entry again is a no-op."""
    import dataclasses

    top1 = M.METRICS["top1"]
    M.register_metric(top1)
    for changed in (dataclasses.replace(top1, func=np.mean),
                    dataclasses.replace(top1, recompute=(("logits", "labels"), np.mean))):
        with pytest.raises(ValueError, match="already registered with another definition"):
            M.register_metric(changed)
    assert M.METRICS["top1"] is top1
