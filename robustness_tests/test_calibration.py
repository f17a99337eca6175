"""Calibration: ECE (15 equal-width bins), adaptive ECE, max CE, NLL and Brier, before and after
temperature scaling. T is fitted on an ID calibration split held apart from the ID test split and
applied unchanged to the test split and every shift (ID -> OOD calibration transfer). A shift scored
over a subset of the classes (ImageNet-R/-A: their own 200-class head) gets the T of that head, fitted
on the ID calibration half cut to those classes. A T on its search bound is recorded in the rows'
``extra`` (``temperature_at_bound``), never raised."""
from __future__ import annotations

from functools import partial

import pytest

from clip_robustness.fixtures.conditions import condition
from clip_robustness.fixtures.datasets import WORLD_SHIFT_SPLITS
from clip_robustness.fixtures.embed import classifier_logits, head_choices
from clip_robustness.fixtures.real_data import (IMAGEFOLDER_PREFIX, SHIFT_SETS, calibration_split, load_real_set,
                                 parametrize_real_sets, real_templates)
from clip_robustness.plugins.metrics import (TEMPERATURE_BOUNDS, adaptive_calibration_error, brier_score, expected_calibration_error,
                             fit_temperature, max_calibration_error, negative_log_likelihood, softmax,
                             temperature_at_bound)

pytestmark = pytest.mark.calibration

CALIBRATION_METRICS = {
    "ece": partial(expected_calibration_error, n_bins=15, validate=False),
    "aece": partial(adaptive_calibration_error, n_bins=15, validate=False),
    "mce": partial(max_calibration_error, n_bins=15, validate=False),
    "nll": partial(negative_log_likelihood, validate=False),
    "brier": partial(brier_score, validate=False),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_real_sets(metafunc, "real_set", ("imagenet",) + SHIFT_SETS + (IMAGEFOLDER_PREFIX,))


def record_calibration(clip, calibration_set, target, cache, record, template_sets) -> None:
    for head, templates in head_choices(clip, target, template_sets):
        cal_logits = classifier_logits(clip, calibration_set, cache, templates=templates)  # (Nc, C)
        # A T on its search bound (a near-chance model) is recorded as such, not raised: the gates judge.
        temperature = fit_temperature(cal_logits, calibration_set.labels, warn=False)
        at_bound = {"temperature_at_bound": temperature_at_bound(temperature),
                    "temperature_bounds": list(TEMPERATURE_BOUNDS)}
        record("temperature", temperature, dataset=target.name, condition=condition(**head),
               n=len(calibration_set), extra={"fitted_on": calibration_set.name, **at_bound})
        logits = classifier_logits(clip, target, cache, templates=templates)  # (N, C)
        for scaling, scaled in (("none", logits), ("temperature", logits / temperature)):
            probs = softmax(scaled)  # (N, C)
            samples = {"logits": scaled, "labels": target.labels}
            for metric, fn in CALIBRATION_METRICS.items():
                record.measure(metric, fn, probs, target.labels, dataset=target.name,
                               condition=condition(**head, scaling=scaling), samples=samples,
                               extra=at_bound if scaling == "temperature" else None)


@pytest.mark.parametrize("split", ("test",) + WORLD_SHIFT_SPLITS)
def test_calibration_world(clip, world, cache, record, rb_config, split):
    record_calibration(clip, world("val"), world(split), cache, record, rb_config.templates)


def test_calibration_real(clip, cache, record, rb_config, real_set):
    # a custom imagefolder set is its own ID set (split in halves like ImageNet val); shifts use ImageNet val
    id_name = real_set if real_set.startswith(IMAGEFOLDER_PREFIX) else "imagenet"
    if id_name not in rb_config.data:
        pytest.fail(f"--data {real_set}=... needs --data imagenet=PATH too: temperature scaling is fitted on "
                    "a calibration half of ImageNet val", pytrace=False)
    id_set = load_real_set(id_name, rb_config)
    calibration_set, id_test = calibration_split(id_set)
    target = id_test if real_set == id_name else load_real_set(real_set, rb_config)
    if target.class_keys != id_set.class_keys:  # R/A subsets: by wnid, never by (repeated) class name
        calibration_set = calibration_set.restricted_to(target.class_keys)
    # T belongs to the head it was fitted with (a 200-class softmax is not a 1000-class one), so a
    # subset's T is fitted on the ID calibration half cut to its classes; none there: say so.
    if len(calibration_set) == 0:
        pytest.fail(f"calibration on {target.name}: the calibration half of --data {id_name} holds no image of its "
                    f"{len(target.classnames)} class(es), so no temperature can be fitted for its head; give "
                    f"--data {id_name} a folder that holds those classes (or a larger --limit)", pytrace=False)
    record_calibration(clip, calibration_set, target, cache, record, real_templates(real_set, rb_config))
