"""Calibration: ECE (15 equal-width bins), adaptive ECE, max CE, NLL and Brier, before and after
temperature scaling. T is fitted on an ID calibration split held apart from the ID test split and
applied unchanged to the test split and every shift (ID -> OOD calibration transfer)."""
from __future__ import annotations

from functools import partial

import pytest

from fixtures.conditions import condition
from fixtures.datasets import WORLD_SHIFT_SPLITS
from fixtures.embed import classifier_logits, head_choices
from fixtures.real_data import SHIFT_SETS, calibration_split, classification_dataset, parametrize_real_sets
from plugins.metrics import (adaptive_calibration_error, brier_score, expected_calibration_error, fit_temperature,
                             max_calibration_error, negative_log_likelihood, softmax)

pytestmark = pytest.mark.calibration

CALIBRATION_METRICS = {
    "ece": partial(expected_calibration_error, n_bins=15, validate=False),
    "aece": partial(adaptive_calibration_error, n_bins=15, validate=False),
    "mce": partial(max_calibration_error, n_bins=15, validate=False),
    "nll": partial(negative_log_likelihood, validate=False),
    "brier": partial(brier_score, validate=False),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_real_sets(metafunc, "real_set", ("imagenet",) + SHIFT_SETS)


def record_calibration(clip, calibration_set, target, cache, record, template_sets) -> None:
    for head, templates in head_choices(clip, target, template_sets):
        cal_logits = classifier_logits(clip, calibration_set, cache, templates=templates)  # (Nc, C)
        temperature = fit_temperature(cal_logits, calibration_set.labels)
        record("temperature", temperature, dataset=target.name, condition=condition(**head),
               n=len(calibration_set), extra={"fitted_on": calibration_set.name})
        logits = classifier_logits(clip, target, cache, templates=templates)  # (N, C)
        for scaling, scaled in (("none", logits), ("temperature", logits / temperature)):
            probs = softmax(scaled)  # (N, C)
            samples = {"logits": scaled, "labels": target.labels}
            for metric, fn in CALIBRATION_METRICS.items():
                record.measure(metric, fn, probs, target.labels, dataset=target.name,
                               condition=condition(**head, scaling=scaling), samples=samples)


@pytest.mark.parametrize("split", ("test",) + WORLD_SHIFT_SPLITS)
def test_calibration_world(clip, world, cache, record, rb_config, split):
    record_calibration(clip, world("val"), world(split), cache, record, rb_config.templates)


def test_calibration_real(clip, cache, record, rb_config, real_set):
    if "imagenet" not in rb_config.data:
        pytest.fail(f"--data {real_set}=... needs --data imagenet=PATH too: temperature scaling is fitted on "
                    "a calibration half of ImageNet val", pytrace=False)
    imagenet = classification_dataset("imagenet", rb_config.data["imagenet"]).head(rb_config.limit)
    calibration_set, id_test = calibration_split(imagenet)
    target = id_test if real_set == "imagenet" else \
        classification_dataset(real_set, rb_config.data[real_set]).head(rb_config.limit)
    if real_set != "imagenet" and target.classnames != imagenet.classnames:
        calibration_set = calibration_set.restricted_to(target.classnames)
    record_calibration(clip, calibration_set, target, cache, record, rb_config.templates)
