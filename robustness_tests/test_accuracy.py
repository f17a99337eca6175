"""Zero-shot accuracy: top-1 with a bootstrap CI, on the world's clean test split and its natural
shifts, and on real ImageNet-style folders given with --data."""
from __future__ import annotations

import pytest

from fixtures.datasets import WORLD_SHIFT_SPLITS
from fixtures.embed import classifier_logits, head_kind_for
from fixtures.real_data import CLASSIFICATION_SETS, classification_dataset

pytestmark = pytest.mark.accuracy


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "real_set" in metafunc.fixturenames:
        from plugins.robustness import RB_CONFIG

        data = metafunc.config.stash[RB_CONFIG].data
        names = [n for n in data if n in CLASSIFICATION_SETS]
        metafunc.parametrize("real_set", names or [pytest.param(None, marks=pytest.mark.skip(
            reason="no real classification set given (--data imagenet=PATH, imagenet-v2=, imagenet-r=, ...)"))])


def record_top1(clip, dataset, cache, record, templates: str) -> None:
    logits = classifier_logits(clip, dataset, cache, templates=templates)  # (N, C)
    correct = logits.argmax(1) == dataset.labels  # (N,)
    condition = "head=linear" if head_kind_for(clip, dataset) == "linear" else f"templates={templates}"
    record.measure("top1", lambda c: c.mean(), correct, dataset=dataset.name, condition=condition,
                   samples={"logits": logits, "labels": dataset.labels})


@pytest.mark.parametrize("split", ("test",) + WORLD_SHIFT_SPLITS)
def test_top1_world(clip, world, cache, record, rb_config, split):
    dataset = world(split)
    for templates in rb_config.templates:
        record_top1(clip, dataset, cache, record, templates)
        if head_kind_for(clip, dataset) == "linear":
            break  # a linear head does not depend on prompts


def test_top1_real(clip, cache, record, rb_config, real_set):
    dataset = classification_dataset(real_set, rb_config.data[real_set]).head(rb_config.limit)
    for templates in rb_config.templates:
        record_top1(clip, dataset, cache, record, templates)
