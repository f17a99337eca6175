"""LMM interaction: does a LLaVA-style LMM built on the CLIP's vision tower classify better than the
CLIP alone, on the two options the CLIP itself finds hardest? (ImageNet-D protocol, see
``clip_robustness.fixtures.lmm.protocol``.)

Rows belong to the tower's CLIP (``model``), with ``lmm=<LMM id>`` in the condition:
``clip_two_way_accuracy`` (the CLIP on the same two options; equals its top-1 by the distractor
rule), ``lmm_accuracy`` and the paired ``lmm_gain`` (LMM minus CLIP on the same items, bootstrap CI;
its row keeps its own items' correctness as samples, the other rows the dataset's outcomes) per
scoring (``scoring=loglik``: the likelier option; ``scoring=generate``: greedy answer matched to
an option, items naming both or neither left out and counted in ``answer_unmatched``), per class
(``class=``), and by the position of the true option (``true_option=first|second``: a position bias
shows as a gap). World: clean test and the shift splits (the hard splits). Real data:
``--data imagenet-d=PATH`` (background, texture, material).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from clip_robustness.fixtures.conditions import condition
from clip_robustness.fixtures.datasets import WORLD_SHIFT_SPLITS, ImageDataset, pixels_key
from clip_robustness.fixtures.embed import classifier_logits
from clip_robustness.fixtures.lmm.protocol import run_protocol
from clip_robustness.fixtures.real_data import parametrize_real_sets
from clip_robustness.plugins.metrics import GAIN_SAMPLES, accuracy_gain
from clip_robustness.plugins.regression import items_digest
from clip_robustness.plugins.stats import seed_for

pytestmark = pytest.mark.lmm


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_real_sets(metafunc, "real_set", ("imagenet-d",))


GAIN = partial(accuracy_gain, validate=False)  # inputs are 0/1 outcomes of the same items, built here


def record_lmm(lmm, dataset: ImageDataset, cache, record, rb_config) -> None:
    clip = lmm.clip
    logits = classifier_logits(clip, dataset, cache, templates=rb_config.templates[0])  # (N, C)
    out = run_protocol(lmm, dataset.images, dataset.labels, logits, dataset.classnames,  # rendered only on a miss
                       seed=seed_for(rb_config.seed, dataset.name), cache=cache, item_ids=dataset.item_ids,
                       pixels=pixels_key(dataset))
    samples = {"labels": out.labels, "distractor": out.distractor, "true_first": out.true_first,
               "clip_correct": out.clip_correct, "loglik": out.loglik, "generated": out.generated}
    extra = {"lmm": lmm.describe(), "templates": rb_config.templates[0], "sample_keys": sorted(samples),
             "answers_head": out.answers[:5]}
    put = dict(dataset=dataset.name, samples=samples, extra=extra, model=clip.id)
    scorings = (("loglik", out.loglik_correct, np.ones(len(out.labels), dtype=bool)),
                ("generate", out.generated == 1, out.matched))

    def cell(keep: np.ndarray, **cond) -> None:
        """LMM accuracy per scoring and the paired gain over the CLIP on the items ``keep``."""
        for scoring, correct, answered in scorings:
            sel = keep & answered
            if not sel.any():
                continue
            c = condition(lmm=lmm.id, scoring=scoring, **cond)
            record.proportion("lmm_accuracy", correct[sel], condition=c, **put)
            pair = (correct[sel].astype(float), out.clip_correct[sel].astype(float))  # (n,) each
            # the gain's own items as its samples (the dataset's file cannot say which subset a row is), so a
            # baseline comparison is paired over the same items
            own = {**put, "samples": dict(zip(GAIN_SAMPLES, pair)),
                   "extra": {**extra, "sample_keys": sorted(GAIN_SAMPLES),
                             "items_digest": items_digest([dataset.item_ids[i] for i in np.flatnonzero(sel)])}}
            if sel.sum() > 1:
                record.measure("lmm_gain", GAIN, *pair, condition=c, **own)
            else:  # one item: no interval to bootstrap
                record("lmm_gain", GAIN(*pair), condition=c, n=1, **own)

    everything = np.ones(len(out.labels), dtype=bool)
    record.proportion("clip_two_way_accuracy", out.clip_correct, condition=condition(lmm=lmm.id), **put)
    cell(everything)
    record.proportion("answer_unmatched", ~out.matched, condition=condition(lmm=lmm.id, scoring="generate"), **put)
    for position in ("first", "second"):
        cell(out.true_first == (position == "first"), true_option=position)
    for k, name in enumerate(dataset.classnames):
        keep = out.labels == k
        if keep.any():
            record.proportion("clip_two_way_accuracy", out.clip_correct[keep],
                              condition=condition(lmm=lmm.id, **{"class": name}), **put)
            cell(keep, **{"class": name})


@pytest.mark.parametrize("split", ("test",) + WORLD_SHIFT_SPLITS)
def test_lmm_world(lmm, world, cache, record, rb_config, split):
    recipe = lmm.record.get("recipe") or {}
    if split in (recipe.get("outside_splits") or ()) and recipe.get("outside_seed") == rb_config.seed:
        # its training scenes are sample_specs(split, n, outside_seed): this --seed would measure them
        pytest.fail(f"{lmm.id} was trained on {split} scenes drawn with seed {rb_config.seed}, so --seed "
                    f"{rb_config.seed} would measure it on its own training data; use another --seed", pytrace=False)
    record_lmm(lmm, world(split), cache, record, rb_config)


def test_lmm_real(lmm, cache, record, rb_config, real_set):
    from clip_robustness.fixtures.imagenet_d import imagenet_d_splits

    for dataset in imagenet_d_splits(rb_config.data[real_set]).values():
        record_lmm(lmm, dataset.spread_head(rb_config.limit), cache, record, rb_config)
