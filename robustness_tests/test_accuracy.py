"""Zero-shot accuracy: top-1 with a Wilson CI, on the world's clean test split and its natural
shifts, and on real ImageNet-style folders given with --data."""
from __future__ import annotations

import pytest

from clip_robustness.fixtures.conditions import condition
from clip_robustness.fixtures.datasets import WORLD_SHIFT_SPLITS
from clip_robustness.fixtures.embed import classifier_logits, head_choices
from clip_robustness.fixtures.real_data import (CLASSIFICATION_SETS, IMAGEFOLDER_PREFIX, classes_present, load_real_set,
                                 parametrize_real_sets, real_templates)

pytestmark = pytest.mark.accuracy


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_real_sets(metafunc, "real_set", CLASSIFICATION_SETS + (IMAGEFOLDER_PREFIX,))


def record_top1(clip, dataset, cache, record, template_sets, extra=None) -> None:
    for head, templates in head_choices(clip, dataset, template_sets):
        logits = classifier_logits(clip, dataset, cache, templates=templates)  # (N, C)
        record.proportion("top1", logits.argmax(1) == dataset.labels, dataset=dataset.name,
                          condition=condition(**head), samples={"logits": logits, "labels": dataset.labels},
                          extra=extra)


@pytest.mark.parametrize("split", ("test",) + WORLD_SHIFT_SPLITS)
def test_top1_world(clip, world, cache, record, rb_config, split):
    record_top1(clip, world(split), cache, record, rb_config.templates)


def test_top1_real(clip, cache, record, rb_config, real_set):
    dataset = load_real_set(real_set, rb_config)
    record_top1(clip, dataset, cache, record, real_templates(real_set, rb_config), extra=classes_present(dataset))
