"""OOD detection: can the model's scores separate unknown inputs from its label set?

Scores (higher = more in-distribution): MCM (softmax of raw cosines / tau, tau = 1) for zero-shot
heads, and MSP, energy and max-logit on the classifier's logits (the zero-shot head with the
model's own logit scale, or a fine-tuned linear head). Metrics: AUROC (ID positive), FPR at 95%
TPR, AUPR-In and AUPR-Out, each with a stratified bootstrap CI (ID and OOD resampled apart).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from clip_robustness.fixtures.conditions import condition
from clip_robustness.fixtures.embed import class_head, head_choices, image_embeddings
from clip_robustness.fixtures.real_data import (IMAGEFOLDER_PREFIX, OOD_PREFIX, load_real_set, ood_dataset, parametrize_real_sets,
                                 real_templates)
from clip_robustness.plugins.metrics import (aupr_in_score, aupr_out_score, energy_score, fpr_at_tpr, max_logit_score, mcm_score,
                             msp_score, ood_auroc_score)

pytestmark = pytest.mark.ood

WORLD_OOD_SETS = {"heldout": "near-OOD: held-out object classes, same style",
                  "far-ood": "far-OOD: scenes without an object (textures, empty scenes, noise)"}
OOD_METRICS = {
    "auroc": partial(ood_auroc_score, validate=False),
    "fpr95": partial(fpr_at_tpr, tpr=0.95, validate=False),
    "aupr_in": partial(aupr_in_score, validate=False),
    "aupr_out": partial(aupr_out_score, validate=False),
}


def ood_scores(clip, dataset, cache, head: dict, templates: str) -> dict[str, np.ndarray]:
    """Every score function applicable to this head, each (N,)."""
    emb = image_embeddings(clip, dataset, cache)  # (N, D)
    if "head" in head:  # fine-tuned linear head: logit-based scores only
        logits = clip.linear_logits(emb)  # (N, C)
        return {"msp": msp_score(logits), "energy": energy_score(logits), "max_logit": max_logit_score(logits)}
    cosine = emb @ class_head(clip, dataset.classnames, templates, cache).T  # (N, C)
    logits = clip.logits(emb, class_head(clip, dataset.classnames, templates, cache))  # (N, C)
    return {"mcm": mcm_score(cosine, tau=1.0), "msp": msp_score(logits), "energy": energy_score(logits),
            "max_logit": max_logit_score(logits)}


def record_ood(clip, id_set, ood_set, cache, record, template_sets) -> None:
    # OOD sets carry no labels of the ID space; score them over the ID classes
    ood_set.classnames = id_set.classnames
    for head, templates in head_choices(clip, id_set, template_sets):
        scores_in = ood_scores(clip, id_set, cache, head, templates)
        scores_out = ood_scores(clip, ood_set, cache, head, templates)
        for score, s_in in scores_in.items():
            s_out = scores_out[score]
            for metric, fn in OOD_METRICS.items():
                record.measure(metric, fn, s_in, s_out, two_sample=True, dataset=ood_set.name,
                               condition=condition(**head, score=score, id=id_set.name),
                               samples={"scores_in": s_in.astype(np.float32), "scores_out": s_out.astype(np.float32)})


@pytest.mark.parametrize("ood_split", WORLD_OOD_SETS)
def test_ood_world(clip, world, cache, record, rb_config, ood_split):
    record_ood(clip, world("test"), world(ood_split), cache, record, rb_config.templates)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_real_sets(metafunc, "ood_set_name", (OOD_PREFIX,))


def test_ood_real(clip, cache, record, rb_config, ood_set_name):
    # ID sets: ImageNet val and every custom imagefolder set (the row's condition names the ID set)
    id_names = [n for n in rb_config.data if n == "imagenet" or n.startswith(IMAGEFOLDER_PREFIX)]
    if not id_names:
        pytest.fail(f"--data {ood_set_name}=... needs the ID set too: --data imagenet=PATH or "
                    '--data "imagefolder:NAME=PATH"', pytrace=False)
    ood_set = ood_dataset(ood_set_name, rb_config.data[ood_set_name]).spread_head(rb_config.limit)
    for id_name in id_names:
        id_set = load_real_set(id_name, rb_config)
        record_ood(clip, id_set, ood_set, cache, record, real_templates(id_name, rb_config))
