"""Visual-factor invariance: which single factors (pose, viewpoint, background, pattern, colour, size,
partial view, lighting, occlusion, multiple objects, style) change the model's decision?

On the world the factors are exact interventions (``clip_robustness.fixtures.factors``): canonical test scenes and,
per factor value, the same scenes with only that factor changed. Per (factor, value):
``top1`` (the issue's "accuracy": the registry's name for top-1 accuracy, Wilson CI),
``consistency`` (prediction equal to the canonical render's prediction, over all scenes, Wilson CI)
and ``accuracy_drop`` (canonical top-1 minus intervened top-1 on the same scenes, paired bootstrap
CI). Canonical top-1 is recorded under ``factor=canonical``.

Across the run's models (at least 3): ``effective_robustness`` per (model, factor) -- accuracy on the
factor's renders (pooled over its values) minus what a probit-axis line fitted across the run's
models predicts from their canonical accuracy (accuracy on the line, Taori et al. 2020); the CI
resamples scenes jointly for every model and refits the line each time.

Counterexamples (with the run's first head): for the first correctly classified canonical scenes,
hypothesis searches each factor (and all factors at once, ``factor=combined``) for a change that
flips the prediction and shrinks it to a minimal change (``clip_robustness.fixtures.counterexamples``);
``flip_rate`` is the fraction of searched scenes with a counterexample (within the search budget),
whose images and predictions go to the row's samples.

Real data: ImageNet-X (``--data imagenet=PATH`` plus the ``imagenet-x`` package's annotations or
``--data imagenet-x=PATH``): per-factor ``top1`` and ``error_ratio`` for the 16 factors, and their
``effective_robustness`` across the run's models. The annotations are CC BY-NC 4.0.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import pytest

from clip_robustness.fixtures import imagenet_x
from clip_robustness.fixtures.conditions import condition
from clip_robustness.fixtures.counterexamples import MAX_EXAMPLES, model_predictor, search_counterexample, single_thread
from clip_robustness.fixtures.datasets import DatasetError, render_specs
from clip_robustness.fixtures.embed import classifier_logits, head_choices
from clip_robustness.fixtures.factors import (DATASET, FACTOR_NAMES, N_CANONICAL, FactorSuite, factor_effective_robustness,
                              factor_suite)
from clip_robustness.fixtures.real_data import load_real_set, parametrize_real_sets
from clip_robustness.plugins.metrics import UndefinedMetricWarning, error_ratio

pytestmark = pytest.mark.factor

N_SEARCH_SCENES = 5  # correctly classified canonical scenes searched per (model, factor)
MIN_MODELS = 3  # a line through 2 models gives every model an effective robustness of 0


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_real_sets(metafunc, "imagenet_set", ("imagenet",))


@pytest.fixture(scope="module")
def suite(rb_config, cache) -> FactorSuite:
    """Canonical scenes and their single-factor interventions (rendered once, lazily, and kept on disk)."""
    return factor_suite(N_CANONICAL, seed=rb_config.seed, limit=rb_config.limit, cache=cache)


@contextmanager
def undefined_cis_warn():
    """An interval that the data cannot define (a rare factor absent from most resamples, a resample
    where every model has the same accuracy) is a result, recorded as nan: keep its
    UndefinedMetricWarning a warning under ``filterwarnings = error``."""
    with warnings.catch_warnings():
        warnings.simplefilter("default", UndefinedMetricWarning)
        yield


def _accuracy_drop(canonical_correct: np.ndarray, correct: np.ndarray) -> float:
    return float(np.mean(canonical_correct) - np.mean(correct))


def test_factor_world_canonical(clip, suite, cache, record, rb_config):
    canonical = suite.canonical
    for head, templates in head_choices(clip, canonical, rb_config.templates):
        logits = classifier_logits(clip, canonical, cache, templates=templates)  # (N, C)
        record.proportion("top1", logits.argmax(1) == canonical.labels, dataset=DATASET,
                          condition=condition(**head, factor="canonical"),
                          samples={"logits": logits, "labels": canonical.labels})


@pytest.mark.parametrize("factor", FACTOR_NAMES)
def test_factor_world(clip, suite, cache, record, rb_config, factor):
    canonical = suite.canonical
    for head, templates in head_choices(clip, canonical, rb_config.templates):
        canon_logits = classifier_logits(clip, canonical, cache, templates=templates)  # (N, C)
        canon_pred = canon_logits.argmax(1)
        canon_correct = canon_pred == canonical.labels
        for value in suite.values(factor):
            dataset = suite.dataset(factor, value)
            logits = classifier_logits(clip, dataset, cache, templates=templates)  # (N, C)
            pred = logits.argmax(1)
            correct = pred == dataset.labels
            cond = condition(**head, factor=factor, value=value)
            samples = {"logits": logits, "canonical_logits": canon_logits, "labels": dataset.labels}
            paired = {"sample_keys": ["logits", "canonical_logits", "labels"]}
            record.proportion("top1", correct, dataset=DATASET, condition=cond, samples=samples)
            record.proportion("consistency", pred == canon_pred, dataset=DATASET, condition=cond,
                              samples=samples, extra=paired)
            record.measure("accuracy_drop", _accuracy_drop, canon_correct, correct, dataset=DATASET,
                           condition=cond, samples=samples, extra=paired)


def _primary_correct(model, suite: FactorSuite, cache, templates) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    """(head condition, canonical correctness (N,), per factor the fraction of its values right (N,))."""
    head, chosen = head_choices(model, suite.canonical, templates)[0]

    def correct(dataset):
        return classifier_logits(model, dataset, cache, templates=chosen).argmax(1) == dataset.labels  # (N,)

    per_factor = {f: np.mean([correct(suite.dataset(f, v)) for v in suite.values(f)], axis=0) for f in FACTOR_NAMES}
    return head, correct(suite.canonical), per_factor


def _record_effective_robustness(record, models, heads: list[str], id_correct: np.ndarray,
                                 factor_items: dict[str, tuple[np.ndarray, np.ndarray]], *, dataset: str,
                                 id_name: str, seed: int) -> None:
    """One row per (model, factor); ``factor_items[f] = (correct (N, M), weights (N,))``, see
    ``clip_robustness.fixtures.factors.factor_effective_robustness``."""
    for factor, (fac, weights) in factor_items.items():
        with undefined_cis_warn():
            res = factor_effective_robustness(id_correct, fac, weights, seed=seed)
        fit = None if res.fit is None else {"transform": res.fit.transform, "slope": res.fit.slope,
                                            "intercept": res.fit.intercept, "models": [x.id for x in models]}
        for m, model in enumerate(models):
            ci = None if res.fit is None else (res.lo[m], res.hi[m])
            record("effective_robustness", res.value[m], dataset=dataset, condition=condition(factor=factor), ci=ci,
                   n=int(np.count_nonzero(weights)), model=model.id,
                   extra={"head": heads[m], "id_set": id_name, "id_accuracy": float(res.id_accuracy[m]),
                          "factor_accuracy": float(res.factor_accuracy[m]), "fit": fit})


def _need_models(rb_config) -> None:
    if len(rb_config.models) < MIN_MODELS:
        pytest.skip(f"effective robustness fits a line across the run's models and needs at least {MIN_MODELS}; "
                    f"this run has {len(rb_config.models)} (pass more --model, or none for the embedded zoo)")


def test_factor_effective_robustness(suite, cache, record, rb_config, rb_seed, all_models):
    _need_models(rb_config)
    models = all_models()
    heads, id_cols, fac_cols = [], [], {f: [] for f in FACTOR_NAMES}
    for model in models:
        head, canon, per_factor = _primary_correct(model, suite, cache, rb_config.templates)
        heads.append(condition(**head))
        id_cols.append(canon)
        for f in FACTOR_NAMES:
            fac_cols[f].append(per_factor[f])
    every = np.ones(len(suite.canonical))
    _record_effective_robustness(record, models, heads, np.stack(id_cols, 1),
                                 {f: (np.stack(c, 1), every) for f, c in fac_cols.items()},
                                 dataset=DATASET, id_name=f"{DATASET} (canonical scenes)", seed=rb_seed)


@pytest.mark.parametrize("factor", FACTOR_NAMES + ("combined",))
def test_factor_counterexamples(clip, suite, cache, record, rb_config, factor):
    canonical = suite.canonical
    head, templates = head_choices(clip, canonical, rb_config.templates)[0]
    pred = classifier_logits(clip, canonical, cache, templates=templates).argmax(1)
    right = np.flatnonzero(pred == canonical.labels)[:N_SEARCH_SCENES]
    if right.size == 0:
        pytest.skip(f"{clip.id} classifies none of the {len(canonical)} canonical scenes correctly: nothing to flip")
    predict = model_predictor(clip, canonical, cache, templates, seed=suite.seed)
    factors = FACTOR_NAMES if factor == "combined" else (factor,)
    with single_thread(clip.device):
        found = [search_counterexample(predict, suite.canonical_specs[i], int(canonical.labels[i]), factors,
                                       cache=cache) for i in right]  # outcomes cached on disk
    hits = [c for c in found if c is not None]
    names = canonical.classnames
    samples, extra = None, {"searched_scenes": [suite.canonical_specs[i].id[:12] for i in right],
                            "max_examples": MAX_EXAMPLES, "counterexamples": []}
    if hits:
        scenes = [c.canonical for c in hits] + [c.flipped for c in hits]
        rgb = np.stack(render_specs(scenes, range(len(scenes)), seed=suite.seed, cache=cache))  # (2K, H, W, 3)
        canon_rgb, flip_rgb = rgb[:len(hits)], rgb[len(hits):]
        labels = np.array([c.label for c in hits], dtype=np.int64)
        samples = {"canonical_images": canon_rgb, "flipped_images": flip_rgb, "labels": labels,
                   "canonical_predictions": labels, "flipped_predictions": np.array([c.prediction for c in hits])}
        extra["sample_keys"] = sorted(samples)
        extra["counterexamples"] = [
            {"scene": c.canonical.id[:12], "label": names[c.label], "canonical_prediction": names[c.label],
             "flipped_prediction": names[c.prediction], "changes": c.changes, "steps": c.steps,
             "spec_diff": {k: list(v) for k, v in c.spec_diff().items()}, "calls": c.calls} for c in hits]
    record.proportion("flip_rate", np.array([c is not None for c in found]), dataset=DATASET,
                      condition=condition(**head, factor=factor), samples=samples, extra=extra)


# ----------------------------------------------------------------------------- ImageNet-X


def _imagenet_x(rb_config):
    """(ImageNet val dataset, annotated indices (K,), factor labels (K, 16), annotations)."""
    try:
        annotations = imagenet_x.load_annotations(rb_config.data.get("imagenet-x"))
    except DatasetError as err:
        if "imagenet-x" in rb_config.data:
            raise
        pytest.skip(str(err))
    imagenet = load_real_set("imagenet", rb_config)
    idx, factors = imagenet_x.align(imagenet, annotations)
    return imagenet, idx, factors, annotations


def _error_ratio(correct: np.ndarray, has_factor: np.ndarray) -> float:
    return float(error_ratio(np.mean(correct[has_factor]) if has_factor.any() else np.nan, np.mean(correct),
                             validate=False))


def test_factor_imagenet_x(clip, cache, record, rb_config, imagenet_set):
    imagenet, idx, factors, annotations = _imagenet_x(rb_config)
    extra = {"labels": f"{annotations.which} factor", "prototypes_removed": annotations.prototypes_removed,
             "annotations": annotations.source, "licence": imagenet_x.LICENCE,
             "sample_keys": ["correct", "factors"], "factors": list(imagenet_x.FACTORS)}
    for head, templates in head_choices(clip, imagenet, rb_config.templates):
        logits = classifier_logits(clip, imagenet, cache, templates=templates)[idx]  # (K, 1000)
        correct = logits.argmax(1) == imagenet.labels[idx]  # (K,)
        samples = {"correct": correct, "factors": factors}
        record.proportion("top1", correct, dataset="imagenet-x", condition=condition(**head), samples=samples,
                          extra=extra)
        for j, factor in enumerate(imagenet_x.FACTORS):
            cond = condition(**head, factor=factor)
            with undefined_cis_warn():  # a --limit subset may hold few or no images of a rare factor
                record.proportion("top1", correct[factors[:, j]], dataset="imagenet-x", condition=cond,
                                  samples=samples, extra=extra)
                record.measure("error_ratio", _error_ratio, correct, factors[:, j], dataset="imagenet-x",
                               condition=cond, samples=samples, extra=extra)


def test_factor_effective_robustness_imagenet_x(cache, record, rb_config, rb_seed, all_models, imagenet_set):
    _need_models(rb_config)
    imagenet, idx, factors, annotations = _imagenet_x(rb_config)
    models = all_models()
    heads, cols = [], []
    for model in models:
        head, templates = head_choices(model, imagenet, rb_config.templates)[0]
        heads.append(condition(**head))
        logits = classifier_logits(model, imagenet, cache, templates=templates)[idx]  # (K, 1000)
        cols.append(logits.argmax(1) == imagenet.labels[idx])
    correct = np.stack(cols, 1)  # (K, M)
    per_factor = {f: (correct, factors[:, j].astype(np.float64)) for j, f in enumerate(imagenet_x.FACTORS)}
    _record_effective_robustness(record, models, heads, correct, per_factor, dataset="imagenet-x",
                                 id_name="imagenet-x (all annotated images)", seed=rb_seed)
