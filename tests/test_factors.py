"""Tests of the world's factor interventions (clip_robustness.fixtures.factors) and of the effective-robustness
computation the ``factor`` property records."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import linregress, norm

from clip_robustness.fixtures.conditions import condition
from clip_robustness.fixtures.datasets import world_dataset
from clip_robustness.fixtures.factors import (CANONICAL, FACTOR_FIELDS, FACTOR_NAMES, FACTOR_VALUES, bootstrap_ci_vector,
                              canonical_spec, canonical_specs, changed_fields, effective_robustness_all,
                              factor_effective_robustness, factor_suite, intervene, specs_dataset, weighted_accuracy)
from clip_robustness.fixtures.world import CLASS_TEXTURE, RANGES, SceneSpec, sample_specs
from clip_robustness.plugins.metrics import UndefinedMetricWarning
from clip_robustness.plugins.stats import bootstrap_ci
from tests.conftest import RANDOM_MODEL

FAST = settings(max_examples=25, deadline=None, derandomize=True)
PAIRS = [(f, v) for f, values in FACTOR_VALUES.items() for v, _ in values]


def test_factor_vocabulary():
    required = {"pose", "viewpoint", "background", "pattern", "color", "size", "partial_view", "lighting",
                "occlusion", "multiple_objects", "style"}
    assert required <= set(FACTOR_NAMES) and set(FACTOR_FIELDS) == set(FACTOR_NAMES)
    for factor, value in PAIRS:
        assert condition(factor=factor, value=value)  # condition-safe names (no ';' or '=')
    assert len({(f, v) for f, v in PAIRS}) == len(PAIRS)


@FAST
@given(seed=st.integers(0, 10_000), pair=st.sampled_from(PAIRS))
def test_intervention_changes_exactly_one_factor(seed, pair):
    factor, value = pair
    canon = canonical_specs(1, seed)[0]
    changed = intervene(canon, factor, value)
    diff = changed_fields(canon, changed)
    # one field, or none when the value equals the scene's canonical one (e.g. colour red on a red scene)
    assert set(diff) <= {FACTOR_FIELDS[factor]}
    assert changed.label == canon.label
    if factor == "lighting":  # brightness only; the light's direction is not part of the factor
        assert changed.light[:2] == canon.light[:2]
    if factor == "pose" and value != "yaw+90":  # tilts keep the (in-distribution) yaw
        assert changed.pose[0] == canon.pose[0]
    if factor == "viewpoint" and value != "azimuth+90":
        assert changed.camera[0] == canon.camera[0] and changed.camera[2] == canon.camera[2]


@FAST
@given(seed=st.integers(0, 10_000))
def test_canonical_spec_is_canonical_and_idempotent(seed):
    raw = sample_specs("test", 1, seed)[0]
    canon = canonical_spec(raw)
    assert canonical_spec(canon) == canon
    for name, value in CANONICAL.items():
        assert getattr(canon, name) == value
    assert canon.pattern == CLASS_TEXTURE[canon.shape] and canon.pose[1:] == (0.0, 0.0)
    # what the study does not vary keeps the test split's value
    assert (canon.shape, canon.color, canon.pose[0], canon.camera[0], canon.light[:2]) == \
        (raw.shape, raw.color, raw.pose[0], raw.camera[0], raw.light[:2])


def test_every_value_is_a_real_change_for_most_scenes():
    canon = canonical_specs(30, 0)
    for factor, value in PAIRS:
        changed = sum(bool(changed_fields(s, intervene(s, factor, value))) for s in canon)
        assert changed >= 0.8 * len(canon), (factor, value, changed)  # colours: ~1 in 10 scenes already has it


def test_intervene_rejects_unknown_names():
    spec = canonical_specs(1)[0]
    with pytest.raises(ValueError, match="factors are"):
        intervene(spec, "weather", "rain")
    with pytest.raises(ValueError, match="values are"):
        intervene(spec, "pose", "sideways")
    with pytest.raises(ValueError, match="in-distribution class"):
        canonical_spec(SceneSpec(shape=None))


def test_suite_pairs_are_aligned_and_share_world_item_ids():
    suite = factor_suite(50, seed=3, limit=6)
    assert len(suite.canonical) == 6 and len(suite.interventions) == len(PAIRS)
    for (factor, value), dataset in suite.interventions.items():
        assert len(dataset) == 6 and np.array_equal(dataset.labels, suite.canonical.labels)
        for canon, meta in zip(suite.canonical_specs, dataset.meta):
            assert set(changed_fields(canon, SceneSpec.from_dict(meta))) <= {FACTOR_FIELDS[factor]}
    # the same scenes through world_dataset and specs_dataset hit the same cache entries
    world = world_dataset("test", n=4, seed=3)
    mine = specs_dataset(sample_specs("test", 4, 3), seed=3, name="world:test")
    assert mine.item_ids == world.item_ids and np.array_equal(mine.labels, world.labels)


def test_pair_renders_differ_only_where_the_factor_acts():
    canon = canonical_specs(1, 0)[0]
    ds = specs_dataset([canon, intervene(canon, "background", "bricks"), intervene(canon, "pattern", "plain")])
    a, bricks, plain = (im.astype(int) for im in ds.images())  # (H, W, 3) each
    assert np.abs(a - bricks).max() > 100 and np.abs(a - plain).max() > 100
    # the object keeps its silhouette under a pattern change: the background stays (up to render noise)
    background = np.abs(a - bricks).sum(-1) > 60  # (H, W) pixels the new background changed
    assert np.abs(a - plain)[background].mean() < 8


def test_effective_robustness_all_against_hand_computed_fit():
    # probit(id) = 0, 1, 2 and probit(factor) = -1, 0.5, 1: slope 1, intercept -5/6 by hand
    id_acc, fac_acc = norm.cdf([0.0, 1.0, 2.0]), norm.cdf([-1.0, 0.5, 1.0])
    er, fit = effective_robustness_all(id_acc, fac_acc)
    assert fit.slope == pytest.approx(1.0) and fit.intercept == pytest.approx(-5 / 6)
    expected = fac_acc - norm.cdf(np.array([0.0, 1.0, 2.0]) - 5 / 6)
    np.testing.assert_allclose(er, expected, atol=1e-12)
    assert er[1] > 0 > er[0]  # the middle model sits above the line, the first below
    # models exactly on a line have no effective robustness
    on_line = norm.cdf(0.5 * norm.ppf(id_acc) - 0.3)
    np.testing.assert_allclose(effective_robustness_all(id_acc, on_line)[0], 0.0, atol=1e-12)


def test_weighted_accuracy():
    correct = np.array([[1, 0], [0, 0], [1, 1], [1, 0]], dtype=bool)  # (N=4, M=2)
    np.testing.assert_allclose(weighted_accuracy(correct, np.ones(4)), [0.75, 0.25])
    np.testing.assert_allclose(weighted_accuracy(correct, [1, 1, 0, 0]), [0.5, 0.0])
    assert np.isnan(weighted_accuracy(correct, np.zeros(4))).all()


def test_factor_effective_robustness_matches_independent_computation():
    rng = np.random.default_rng(0)
    p_id, p_fac = np.array([0.3, 0.55, 0.7, 0.9]), np.array([0.2, 0.5, 0.45, 0.8])
    id_correct = rng.random((400, 4)) < p_id  # (N, M)
    fac_correct = rng.random((400, 4)) < p_fac  # (N, M)
    res = factor_effective_robustness(id_correct, fac_correct, np.ones(400), seed=1)
    # independent: least squares on probit axes with scipy.stats.linregress
    x, y = norm.ppf(id_correct.mean(0)), norm.ppf(fac_correct.mean(0))
    line = linregress(x, y)
    np.testing.assert_allclose(res.value, fac_correct.mean(0) - norm.cdf(line.slope * x + line.intercept), atol=1e-12)
    assert np.all(res.lo <= res.value + 1e-12) and np.all(res.value <= res.hi + 1e-12)
    # weights select the items of a factor (ImageNet-X): same as passing only those items
    mask = rng.random(400) < 0.3
    sub = factor_effective_robustness(id_correct, fac_correct, mask.astype(float), seed=1)
    np.testing.assert_allclose(sub.factor_accuracy, fac_correct[mask].mean(0))
    np.testing.assert_allclose(sub.id_accuracy, id_correct.mean(0))
    # a factor no item shows: nan, no fit
    none = factor_effective_robustness(id_correct, fac_correct, np.zeros(400))
    assert none.fit is None and np.isnan(none.value).all()


def test_bootstrap_ci_vector_equals_scalar_bootstrap_per_entry():
    rng = np.random.default_rng(2)
    a, b = rng.random((120, 3)), rng.random(120)  # (N, K), (N,)

    def vector(x, y):
        return x.mean(0) - y.mean()  # (K,)

    lo, hi = bootstrap_ci_vector(vector, a, b, seed=7)
    for k in range(3):  # same seed, same resamples as clip_robustness.plugins.stats.bootstrap_ci
        assert (lo[k], hi[k]) == pytest.approx(bootstrap_ci(lambda x, y, k=k: vector(x, y)[k], a, b, seed=7))


def test_bootstrap_ci_vector_undefined_entries_are_nan_with_a_warning():
    x = np.array([0.0, 0.0, 0.0, 1.0])

    def stat(v):
        return np.array([v.mean(), v.mean() / v.sum()])  # the second is 0/0 when a resample has no 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lo, hi = bootstrap_ci_vector(stat, x, seed=0, n_resamples=200)
    assert np.isfinite([lo[0], hi[0]]).all() and np.isnan([lo[1], hi[1]]).all()
    assert any(issubclass(w.category, UndefinedMetricWarning) for w in caught)


def test_factor_values_stay_inside_the_world_ranges():
    for s in canonical_specs(20, 5):
        for factor, value in PAIRS:
            c = intervene(s, factor, value)  # SceneSpec validates every value on construction
            assert RANGES["size"][0] <= c.size <= RANGES["size"][1]


def test_property_modules_record_the_documented_rows(pytester, run_harness, monkeypatch):
    """The factor and shape-bias modules end to end on a random-init model (3 scenes, one head)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 3-image batches: threads only add contention (4x here)
    suite = Path(__file__).parents[1] / "robustness_tests"
    for name in ("test_factor", "test_shape_bias"):
        pytester.makepyfile(**{name: (suite / f"{name}.py").read_text()})
    result = run_harness("--model", RANDOM_MODEL, "--limit", "3", "--templates", "single")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("error", 0) == 0, result.stdout.str()[-3000:]
    rows = json.loads((pytester.path / "reports" / "robustness.json").read_text())["results"]
    world = [r for r in rows if r["dataset"] == "world:factors"]
    for metric in ("top1", "consistency", "accuracy_drop"):
        cells = {r["condition"] for r in world if r["metric"] == metric and "value=" in r["condition"]}
        assert cells == {condition(factor=f, templates="single", value=v) for f, v in PAIRS}
    assert [r["n"] for r in world if r["condition"] == "factor=canonical;templates=single"] == [3]
    shape = [r for r in rows if r["dataset"] == "world:cue-conflict"]
    assert {r["metric"] for r in shape} == {"shape_bias", "shape_fraction", "texture_fraction"}
    assert any("class=" not in r["condition"] for r in shape)
    flips = [r for r in rows if r["metric"] == "flip_rate"]
    assert not flips or {r["condition"].split(";")[0] for r in flips} == {f"factor={f}" for f in
                                                                          FACTOR_NAMES + ("combined",)}
