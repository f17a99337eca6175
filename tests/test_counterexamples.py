"""Tests of the hypothesis counterexample search (clip_robustness.fixtures.counterexamples) on models built to flip."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clip_robustness.fixtures.counterexamples import apply_steps, model_predictor, search_counterexample, search_space
from clip_robustness.fixtures.factors import FACTOR_NAMES, canonical_specs, changed_fields, specs_dataset
from clip_robustness.fixtures.models import LinearHead
from clip_robustness.fixtures.world import ID_CLASSES

SPEC = canonical_specs(1, 0)[0]
LABEL = ID_CLASSES.index(SPEC.shape)
OTHER = (LABEL + 1) % len(ID_CLASSES)


def test_finds_a_planted_threshold_and_shrinks_to_it():
    # the model is right until the object is tipped forward by 37 degrees or more
    cx = search_counterexample(lambda s: OTHER if s.pose[1] >= 37 else LABEL, SPEC, LABEL, ["pose"])
    assert cx is not None
    assert cx.steps == {"pose.pitch": 37} and cx.changes == ["pose.pitch +37°"]
    assert cx.flipped.pose == (SPEC.pose[0], 37.0, 0.0) and cx.prediction == OTHER
    assert set(cx.spec_diff()) == {"pose"} and cx.canonical == SPEC


def test_shrinks_discrete_factors_to_the_nearest_flipping_value():
    def flips_on_toon_or_sketch(s):
        return OTHER if s.style in ("toon", "sketch") else LABEL

    cx = search_counterexample(flips_on_toon_or_sketch, SPEC, LABEL, ["style"])
    assert cx.changes == ["style=toon"]  # list order: shaded (canonical), flat, toon, sketch
    cx = search_counterexample(lambda s: OTHER if s.style == "sketch" else LABEL, SPEC, LABEL, ["style"])
    assert cx.changes == ["style=sketch"]


def test_combined_search_keeps_only_the_factors_the_flip_needs():
    def needs_two(s):
        return OTHER if s.size >= 1.25 and s.background == "grass" else LABEL

    cx = search_counterexample(needs_two, SPEC, LABEL, FACTOR_NAMES, max_examples=300)
    assert cx is not None
    assert set(cx.steps) == {"size", "background"} and cx.flipped.size == pytest.approx(1.25)
    assert set(changed_fields(SPEC, cx.flipped)) == {"size", "background"}


def test_no_counterexample_and_bad_start():
    assert search_counterexample(lambda s: LABEL, SPEC, LABEL, ["pose", "lighting"]) is None
    with pytest.raises(ValueError, match="already misclassifies"):
        search_counterexample(lambda s: OTHER, SPEC, LABEL, ["pose"])
    with pytest.raises(ValueError, match="factors are"):
        search_space(SPEC, ["weather"])


def test_search_is_reproducible():
    def flaky_looking(s):  # depends on two dimensions in a non-monotone way
        return OTHER if (s.light[2] < 0.6 and abs(s.pose[2]) > 20) else LABEL

    first = search_counterexample(flaky_looking, SPEC, LABEL, ["lighting", "pose"])
    second = search_counterexample(flaky_looking, SPEC, LABEL, ["lighting", "pose"])
    assert first is not None and first.steps == second.steps


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), corner=st.sampled_from(["lo", "hi"]))
def test_every_step_in_the_space_is_a_valid_scene(seed, corner):
    spec = canonical_specs(1, seed)[0]
    dims = search_space(spec, FACTOR_NAMES)
    steps = {d.name: getattr(d, corner) for d in dims}
    assert apply_steps(spec, dims, steps) is not None  # SceneSpec validates every value
    assert apply_steps(spec, dims, dict.fromkeys(steps, 0)) == spec  # step 0 is the canonical scene
    for d in dims:
        assert d.lo <= 0 <= d.hi


@dataclass
class BrightnessModel:
    """A LoadedModel-like fake: its linear head says the true class while the image is bright enough,
    another class once the mean pixel value falls below a threshold (a flip planted on lighting)."""

    threshold: float
    device: str = "cpu"
    precision: str = "fp32"  # clip_robustness.fixtures.embed.model_key reads it

    def __post_init__(self):
        self.weights_sha256, self.preprocess_cfg = f"brightness:{self.threshold!r}", {}  # what the cache keys on
        c = len(ID_CLASSES)
        weight = np.zeros((c, 2), np.float32)
        weight[LABEL] = (1.0, 0.0)  # logit = mean brightness
        weight[OTHER] = (0.0, 1.0)  # logit = threshold
        self.linear_head = LinearHead(weight, np.zeros(c, np.float32), ID_CLASSES)

    def encode_images(self, images):
        return np.array([[im.mean() / 255.0, self.threshold] for im in images], np.float32)  # (N, 2)

    def linear_logits(self, emb):
        return emb @ self.linear_head.weight.T + self.linear_head.bias  # (N, C)


def test_search_through_the_model_path_finds_the_darkness_threshold():
    dataset = specs_dataset([SPEC])
    model = BrightnessModel(threshold=float(dataset.images()[0].mean() / 255.0) * 0.8)
    predict = model_predictor(model, dataset, cache=None, templates="openai")
    assert predict(SPEC) == LABEL
    cx = search_counterexample(predict, SPEC, LABEL, ["lighting", "style"])
    assert cx is not None and list(cx.steps) == ["lighting.brightness"] and cx.steps["lighting.brightness"] < 0
    # minimal: one step brighter no longer flips
    brighter = SPEC.replace(light=(*SPEC.light[:2], round(cx.flipped.light[2] + 0.01, 6)))
    assert predict(cx.flipped) == OTHER and predict(brighter) == LABEL


def test_cached_search_equals_a_fresh_search_and_a_rerun_searches_nothing(tmp_path):
    """The search is sequential (hypothesis), so its outcome is cached, not batched: on a few scenes the
    stored outcome equals a fresh search, and a re-run (a new cache object: a new process) asks nothing."""
    from clip_robustness.fixtures.cache import EmbeddingCache
    from clip_robustness.fixtures.counterexamples import Predictor

    planted = Predictor(lambda s: OTHER if s.pose[1] >= 37 or s.light[2] < 0.5 else LABEL, key={"planted": 1})
    calls = []
    counting = Predictor(lambda s: calls.append(s.id) or planted(s), planted.key)
    for spec in canonical_specs(3, 0):
        fresh = search_counterexample(planted.fn, spec, LABEL, ["pose", "lighting"])  # no key: not cached
        cached = search_counterexample(planted, spec, LABEL, ["pose", "lighting"], cache=EmbeddingCache(tmp_path))
        again = search_counterexample(counting, spec, LABEL, ["pose", "lighting"], cache=EmbeddingCache(tmp_path))
        assert fresh is not None and fresh == cached == again and calls == []
    none = Predictor(lambda s: calls.append(s.id) or LABEL, {"planted": "never flips"})
    assert search_counterexample(none, SPEC, LABEL, ["pose"], cache=EmbeddingCache(tmp_path)) is None
    calls.clear()
    assert search_counterexample(none, SPEC, LABEL, ["pose"], cache=EmbeddingCache(tmp_path)) is None and not calls
    # changed settings, scene or model never hit
    search_counterexample(counting, SPEC, LABEL, ["pose"], cache=EmbeddingCache(tmp_path), max_examples=7)
    assert calls
    calls.clear()
    search_counterexample(Predictor(counting.fn, {"planted": 2}), SPEC, LABEL, ["pose", "lighting"],
                          cache=EmbeddingCache(tmp_path))
    assert calls


def test_model_predictor_key_names_model_head_and_render():
    dataset = specs_dataset([SPEC])
    keys = [model_predictor(BrightnessModel(threshold=t), dataset, cache=None, templates="openai").key
            for t in (0.3, 0.4)]
    assert keys[0] != keys[1] and keys[0]["head"].startswith("linear:") and keys[0]["render_version"] >= 1
