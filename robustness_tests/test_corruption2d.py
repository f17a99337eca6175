"""2D corruption tolerance: zero-shot top-1 under the ImageNet-C families (15 + 4 extra) x 5 severities.

Per model: ``top1`` per (corruption, severity) with a Wilson CI (logits saved as samples),
``relative_top1`` (corrupted / clean accuracy, paired bootstrap over images), the clean row
(``corruption=none;severity=0``) and the means over all cells (``corruption=mean``; over a partial
ImageNet-C copy ``corruption=partial-mean;covers=...``, with ``extra.missing``); each cell's
row carries the corruption throughput (``extra.images_per_s``) when it was computed in this run.
Across models: ``mce_corruption`` (Hendrycks' mCE over the 15 ImageNet-C families, and each
family's CE) against a reference model of the run: ``embedded:rn-clip`` when present, else the
first ``--model``.

Run size: the world test split's first 50 images per cell by default (19 families x 5 severities
= 4,750 corrupted images per model, about a minute on 2 CPU cores; corrupted pixels are shared by
the models of a process and embeddings are cached). ``--limit N`` sets the number of images per
cell instead (up to the split's 1,000). Real data: ``--data imagenet-c=PATH`` in the published
layout ``<corruption>/<severity>/<wnid>/*.JPEG``; with ``--data imagenet=PATH`` too, relative
accuracy is to ImageNet val. A custom set (``--data "imagefolder:NAME=PATH"``) is corrupted here, as
the world's images are (its first 50 images spread over classes, or ``--limit``).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from clip_robustness.fixtures.conditions import condition
from clip_robustness.fixtures.corruption_cells import (Cell, cell_logits, corruption_condition, corruption_folder_cells,
                                                      interval_or_none, record_corruption_grid)
from clip_robustness.fixtures.corruptions2d import ALL_FAMILIES, FAMILIES, SEVERITIES
from clip_robustness.fixtures.embed import head_choices
from clip_robustness.fixtures.real_data import IMAGEFOLDER_PREFIX, load_real_set, parametrize_real_sets, real_templates
from clip_robustness.plugins.metrics import UndefinedMetricWarning, mean_corruption_error

pytestmark = pytest.mark.corruption2d

DEFAULT_IMAGES = 50
REFERENCE_MODEL = "embedded:rn-clip"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_real_sets(metafunc, "real_set", ("imagenet-c", IMAGEFOLDER_PREFIX))


def world_cells(world, rb_config):
    """The clean world test images and one cell per (family, severity)."""
    dataset = world("test").head(DEFAULT_IMAGES if rb_config.limit is None else None)
    return dataset, [Cell(f, s, dataset, corruption_condition(f, s)) for f in ALL_FAMILIES for s in SEVERITIES]


def test_corruption2d_world(clip, world, cache, record, rb_config):
    clean, cells = world_cells(world, rb_config)
    head, templates = head_choices(clip, clean, rb_config.templates)[0]
    record_corruption_grid(clip, clean, cells, cache, record, head=head, templates=templates, dataset_name=clean.name,
                           families=ALL_FAMILIES)


def test_corruption2d_real(clip, cache, record, rb_config, real_set):
    if real_set.startswith(IMAGEFOLDER_PREFIX):  # a custom set: corrupted here, as the world's images are
        clean = load_real_set(real_set, rb_config).spread_head(DEFAULT_IMAGES if rb_config.limit is None else None)
        cells = [Cell(f, s, clean, corruption_condition(f, s)) for f in ALL_FAMILIES for s in SEVERITIES]
        dataset_name = clean.name
    else:
        cells = corruption_folder_cells(real_set, rb_config.data[real_set], ALL_FAMILIES, rb_config.limit)
        clean = load_real_set("imagenet", rb_config) if "imagenet" in rb_config.data else None
        dataset_name = real_set
    head, templates = head_choices(clip, cells[0].dataset, real_templates(real_set, rb_config))[0]
    record_corruption_grid(clip, clean, cells, cache, record, head=head, templates=templates,
                           dataset_name=dataset_name, families=ALL_FAMILIES)


def reference_model(models):
    return next((m for m in models if m.id == REFERENCE_MODEL), models[0])


def test_mce_world(all_models, world, cache, record, rb_config):
    """mCE of every other model against the run's reference model, on the same images."""
    if len(rb_config.models) < 2:  # decided before any model loads
        pytest.skip("mCE compares models: give at least two --model (the reference is embedded:rn-clip "
                    "when present, else the first)")
    models = all_models()
    reference = reference_model(models)
    clean, cells = world_cells(world, rb_config)
    cells = [c for c in cells if c.family in FAMILIES]  # mCE is defined over the 15 ImageNet-C families

    def correct(model) -> np.ndarray:  # (N, F, S) 0/1
        _, templates = head_choices(model, clean, rb_config.templates)[0]
        grid = [cell_logits(model, c, cache, templates).argmax(1) == clean.labels for c in cells]
        return np.stack(grid, 1).reshape(len(clean), len(FAMILIES), len(SEVERITIES)).astype(float)

    def mce(a: np.ndarray, b: np.ndarray) -> float:
        return mean_corruption_error(1 - a.mean(0), 1 - b.mean(0), validate=False)

    ref_ok = correct(reference)
    for model in models:
        if model.id == reference.id:
            continue
        ok = correct(model)
        for f, family in enumerate((None,) + FAMILIES):
            a, b = (ok, ref_ok) if family is None else (ok[:, f - 1:f], ref_ok[:, f - 1:f])
            cond = condition(corruption="mean") if family is None else condition(corruption=family)
            with warnings.catch_warnings():  # a reference without errors leaves mCE undefined: nan, with the reason
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                value = mce(a, b)
            ci, why = interval_or_none(record, mce, a, b) if np.isfinite(value) else \
                (None, f"undefined: {reference.id} makes no error on these images")
            record("mce_corruption", value, model=model.id, dataset=clean.name, condition=cond, ci=ci, n=len(clean),
                   extra={"reference": reference.id, **({"ci_note": why} if why else {})})
