"""Image-text retrieval (bridging the modalities): Recall@1/5/10 in both directions, and the modality gap.

On world captions (``clip_robustness.fixtures.retrieval_data``: 5 captions per image, the canonical caption plus 4
sampled training-style captions) and on COCO / Flickr30k (``--data coco=PATH`` /
``--data flickr30k=PATH``: images plus Karpathy's split JSON, 5k / 1k test images):

* clean: ``i2t_r1/5/10`` (an image query is correct if any of its captions is in its top K) and
  ``t2i_r1/5/10`` (a caption query if its image is), and ``modality_gap``;
* corrupted images (the captions clean): 2D families gaussian noise, motion blur, fog, JPEG and 3D
  families near focus, fog 3D, z-motion blur (world only: they need depth), at severities 3 and 5;
* perturbed captions (the images clean): paraphrase frames, synonym swaps, word-order shuffles,
  attribute drops.

CIs resample images with their captions (the gallery stays whole, so each query's outcome is
fixed and the bootstrap averages per-image outcomes). The R@K rows keep those per-image outcomes as
samples (``hits``), so a baseline comparison is paired over the same images. Run size: the first 100
world test images (500 captions) by default; ``--limit N`` sets the number of images (of the world or
real set).
"""
from __future__ import annotations

import numpy as np
import pytest

from clip_robustness.fixtures.conditions import condition
from clip_robustness.fixtures.corruption_cells import corruption3d_condition, corruption_condition, world_depth_source
from clip_robustness.fixtures.embed import image_embeddings, text_embeddings
from clip_robustness.fixtures.real_data import parametrize_real_sets
from clip_robustness.fixtures.retrieval_data import (KARPATHY_SETS, PERTURBATIONS, CaptionSet, karpathy_caption_set,
                                     retrieval_hits, world_caption_set)
from clip_robustness.fixtures.world import FOV_DEG
from clip_robustness.plugins.metrics import BATCHED, RETRIEVAL_SAMPLES, BatchedForm, modality_gap
from clip_robustness.plugins.regression import items_digest

pytestmark = pytest.mark.retrieval

DEFAULT_IMAGES = 100
KS = (1, 5, 10)
CORRUPTIONS_2D = ("gaussian_noise", "motion_blur", "fog", "jpeg_compression")
CORRUPTIONS_3D = ("near_focus", "fog_3d", "z_motion_blur")
SEVERITIES = (3, 5)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_real_sets(metafunc, "real_set", tuple(KARPATHY_SETS))


def record_retrieval(clip, captions: CaptionSet, cache, record, cond: str, image_condition=None) -> None:
    img = image_embeddings(clip, captions.images, cache, image_condition)  # (N, D)
    txt = text_embeddings(clip, captions.captions, cache)  # (N * 5, D)
    # per-image hits as the rows' samples, so a baseline comparison resamples the same images in both runs
    items = {"sample_keys": list(RETRIEVAL_SAMPLES),
             "items_digest": items_digest([*captions.images.item_ids, *captions.captions])}
    for metric, per_image in retrieval_hits(img, txt, captions.per_image, KS).items():
        record.measure(metric, np.mean, per_image, dataset=captions.name, condition=cond,
                       samples=dict(zip(RETRIEVAL_SAMPLES, (per_image,))), extra=items)
    by_image = txt.reshape(len(img), captions.per_image, -1)  # (N, 5, D)
    record.measure("modality_gap", _gap_by_image, img, by_image, dataset=captions.name, condition=cond)


def _gap_by_image(img: np.ndarray, by_image: np.ndarray) -> float:
    """modality_gap of images (N, D) and their captions (N, 5, D); a named function, so its CI is cached."""
    return modality_gap(img, by_image.reshape(-1, by_image.shape[-1]), validate=False)


def _gap_items(img: np.ndarray, by_image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    if img.ndim != 2 or by_image.ndim != 3 or img.dtype.kind != "f" or by_image.dtype.kind != "f":
        return None
    return tuple(e / np.linalg.norm(e, axis=-1, keepdims=True) for e in (img, by_image))  # as modality_gap does


def _gap_from_resamples(normalised: tuple[np.ndarray, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """_gap_by_image of each row of ``idx`` (B, k): the same float32 means and norms, rows in memory-sized chunks."""
    img, txt = normalised
    out = np.empty(idx.shape[0])
    step = max(1, (1 << 22) // (idx.shape[1] * txt.shape[1] * txt.shape[2]))
    for start in range(0, idx.shape[0], step):
        rows = idx[start:start + step]
        centres = img[rows].mean(axis=1) - txt[rows].reshape(len(rows), -1, txt.shape[2]).mean(axis=1)  # (b, D)
        out[start:start + step] = [np.linalg.norm(d) for d in centres]
    return out


BATCHED[_gap_by_image] = BatchedForm(_gap_items, _gap_from_resamples)


def record_all(clip, captions: CaptionSet, cache, record, image_conditions: dict) -> None:
    record_retrieval(clip, captions, cache, record, "")
    for kind in PERTURBATIONS:
        record_retrieval(clip, captions.perturbed(kind), cache, record, condition(captions=kind))
    for cond, image_condition in image_conditions.items():
        record_retrieval(clip, captions, cache, record, cond, image_condition)


def test_retrieval_world(clip, world, cache, record, rb_config):
    images = world("test").head(DEFAULT_IMAGES if rb_config.limit is None else None)
    depth = world_depth_source(images)
    conditions = {condition(corruption=f, severity=s): corruption_condition(f, s)
                  for f in CORRUPTIONS_2D for s in SEVERITIES}
    conditions.update({condition(corruption=f, severity=s): corruption3d_condition(f, s, depth, fov_deg=FOV_DEG)
                       for f in CORRUPTIONS_3D for s in SEVERITIES})
    record_all(clip, world_caption_set(images), cache, record, conditions)


def test_retrieval_real(clip, cache, record, rb_config, real_set):
    captions = karpathy_caption_set(real_set, rb_config.data[real_set]).head(rb_config.limit)
    conditions = {condition(corruption=f, severity=s): corruption_condition(f, s)
                  for f in CORRUPTIONS_2D for s in SEVERITIES}
    record_all(clip, captions, cache, record, conditions)
