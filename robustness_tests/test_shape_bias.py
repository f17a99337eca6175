"""Shape bias: on cue-conflict images (one class's shape, another class's texture), does the model
decide by shape or by texture?

``shape_bias = shape decisions / (shape + texture decisions)`` (model-vs-human's ``ShapeBias``, as
``clip_robustness.plugins.metrics.shape_bias_score``): items whose shape class equals their texture class are left
out, predictions matching neither class are ignored by the bias and only lower the two fractions.
Recorded overall and per shape class (``class=NAME``), per classifier head, each with a Wilson CI:
``shape_bias`` over the decided items (``n`` = shape + texture decisions), ``shape_fraction`` and
``texture_fraction`` over all cue-conflict items.

World: the ``cue-conflict`` split; decisions are the argmax of the model's classifier over the ID
classes. Real data: Geirhos et al.'s stimuli (``--data cue-conflict=PATH``, model-vs-human layout);
decisions by 16-way prompts. Each row's ``extra["decision"]`` says which rule was used.
"""
from __future__ import annotations

import numpy as np
import pytest

from clip_robustness.fixtures.conditions import condition
from clip_robustness.fixtures.cue_conflict import (DECISION_16_WAY, DECISION_WORLD, cue_conflict_dataset, shape_bias_cells,
                                   texture_labels)
from clip_robustness.fixtures.datasets import ImageDataset
from clip_robustness.fixtures.embed import classifier_logits, head_choices
from clip_robustness.fixtures.real_data import parametrize_real_sets

pytestmark = pytest.mark.shape_bias


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_real_sets(metafunc, "real_set", ("cue-conflict",))


def record_shape_bias(clip, dataset: ImageDataset, cache, record, template_sets, decision: str) -> None:
    texture = texture_labels(dataset)  # (N,)
    extra = {"decision": decision, "dropped_same_class": int(np.sum(texture == dataset.labels)),
             "sample_keys": ["logits", "labels", "texture_labels"]}
    for head, templates in head_choices(clip, dataset, template_sets):
        logits = classifier_logits(clip, dataset, cache, templates=templates)  # (N, C)
        for cell in shape_bias_cells(logits.argmax(1), dataset.labels, texture, dataset.classnames):
            cond = condition(**head, **({"class": cell.cls} if cell.cls else {}))
            i = cell.index
            samples = {"logits": logits[i], "labels": dataset.labels[i], "texture_labels": texture[i]}
            cell_extra = {**extra, "decided": int(cell.decided.sum())}
            # shape_bias is the shape share of the decided items: a proportion, so its CI is Wilson's
            # over them (defined for any cell with a decision, unlike a bootstrap of the ratio)
            if cell.decided.any():
                record.proportion("shape_bias", cell.shape_votes, dataset=dataset.name, condition=cond,
                                  samples=samples, extra=cell_extra)
            else:
                record("shape_bias", float("nan"), dataset=dataset.name, condition=cond, n=0, samples=samples,
                       extra={**cell_extra, "reason": "no prediction matched the shape or the texture class"})
            record.proportion("shape_fraction", cell.by_shape, dataset=dataset.name, condition=cond,
                              samples=samples, extra=cell_extra)
            record.proportion("texture_fraction", cell.by_texture, dataset=dataset.name, condition=cond,
                              samples=samples, extra=cell_extra)


def test_shape_bias_world(clip, world, cache, record, rb_config):
    record_shape_bias(clip, world("cue-conflict"), cache, record, rb_config.templates, DECISION_WORLD)


def test_shape_bias_real(clip, cache, record, rb_config, real_set):
    dataset = cue_conflict_dataset(real_set, rb_config.data[real_set]).spread_head(rb_config.limit)
    record_shape_bias(clip, dataset, cache, record, rb_config.templates, DECISION_16_WAY)
