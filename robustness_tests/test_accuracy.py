"""Zero-shot accuracy: top-1 with a Wilson CI, on the world's clean test split and its natural
shifts, and on real ImageNet-style folders given with --data."""
from __future__ import annotations

import pytest

from fixtures.conditions import condition
from fixtures.datasets import WORLD_SHIFT_SPLITS
from fixtures.embed import classifier_logits, head_choices
from fixtures.real_data import CLASSIFICATION_SETS, classification_dataset, parametrize_real_sets

pytestmark = pytest.mark.accuracy


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_real_sets(metafunc, "real_set", CLASSIFICATION_SETS)


def record_top1(clip, dataset, cache, record, template_sets) -> None:
    for head, templates in head_choices(clip, dataset, template_sets):
        logits = classifier_logits(clip, dataset, cache, templates=templates)  # (N, C)
        record.proportion("top1", logits.argmax(1) == dataset.labels, dataset=dataset.name,
                          condition=condition(**head), samples={"logits": logits, "labels": dataset.labels})


@pytest.mark.parametrize("split", ("test",) + WORLD_SHIFT_SPLITS)
def test_top1_world(clip, world, cache, record, rb_config, split):
    record_top1(clip, world(split), cache, record, rb_config.templates)


def test_top1_real(clip, cache, record, rb_config, real_set):
    dataset = classification_dataset(real_set, rb_config.data[real_set]).head(rb_config.limit)
    record_top1(clip, dataset, cache, record, rb_config.templates)
