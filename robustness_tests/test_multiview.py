"""3D awareness: dense correspondence across views and multi-view prediction consistency.

Each world test scene is rendered from its reference camera and from four more cameras at the
same elevation and distance, 15, 45, 75 and 105 degrees of azimuth away (``render_views``: the
same world, known geometry). Views are binned by the 3D angle between the viewing directions,
NAVI-style: 0-30, 30-60, 60-90, 90-120 degrees.

* ``correspondence_gain`` (the headline) and ``correspondence_recall``: the views are rendered at
  128 px; up to 100 ground-truth correspondences of the main object per view pair
  (``clip_robustness.fixtures.world.correspondences``, visible in both views) are matched by nearest
  neighbour in the tower's dense features (``clip_robustness.fixtures.dense``: ViT last-block patch
  tokens of the image resized to the model's 64 px, ResNet ``layer3`` of the 128 px image; an 8 x 8
  grid for both zoo towers), sampled bilinearly at the source pixel and compared by cosine with every
  main-object pixel of the target view. Recall at 4, 8 and 16 px of the 128 px image (2, 4 and 8 px
  at 64 px; NAVI's 5/25/50 px are for ~500 px images), one row per threshold and angle bin (condition
  ``angle=LO-HI;threshold=Npx``, plus ``angle=all``). The gain is recall minus the recall of the 2D
  baseline "the object pixel at the source pixel's position" on the same points
  (``clip_robustness.fixtures.multiview``): about zero for features that only encode image position,
  so it is what the features know of 3D beyond the image layout. CIs resample scenes (paired for
  the gain); ``extra`` holds ``recall``, ``same_position`` and ``chance`` (a uniform random match). Both
  rows keep the per-scene hit and point counts as samples, so a baseline comparison is paired over scenes.
* ``consistency``: the fraction of scenes whose zero-shot prediction is the same in every view
  (``views=5``, rendered at the split's 64 px), and between the reference view and each angle bin's
  views (``angle=LO-HI``).

Run size: the first 40 test scenes (200 renders per resolution) by default; ``--limit N`` sets the
number of scenes.
"""
from __future__ import annotations

import numpy as np
import pytest

from clip_robustness.fixtures.conditions import condition
from clip_robustness.fixtures.datasets import ImageDataset
from clip_robustness.fixtures.dense import view_angle_deg
from clip_robustness.fixtures.embed import classifier_logits, head_choices
from clip_robustness.fixtures.multiview import (ANGLE_BINS, CORRESPONDENCE_PX, SCENES, angle_bin, binned_view_pairs,
                                                 scene_renders, score_pairs, view_features)
from clip_robustness.plugins.regression import items_digest

pytestmark = pytest.mark.multiview

THRESHOLDS = (4.0, 8.0, 16.0)  # px of the 128 px renders


def multiview_set(world, rb_config, size: int | None = None) -> tuple[ImageDataset, list[list]]:
    """The scenes and their renders (at ``size`` px, default the split's): ``renders[s][0]`` is the
    reference view of scene s."""
    scenes = world("test").head(SCENES if rb_config.limit is None else None)
    return scenes, scene_renders(scenes, size)


def views_dataset(scenes: ImageDataset, renders: list[list]) -> ImageDataset:
    """Every view of every scene as one classification dataset (scene-major), for the cache."""
    n_views = len(renders[0])
    rgb = [view.rgb for views in renders for view in views]
    ids = tuple(f"{item}/view={','.join(f'{c:g}' for c in view.camera)}"
                for item, views in zip(scenes.item_ids, renders) for view in views)
    return ImageDataset(f"{scenes.name}:multiview", scenes.classnames, np.repeat(scenes.labels, n_views), ids,
                        loader=lambda idx: [rgb[i] for i in idx])


def test_correspondence_world(clip, world, record, rb_config):
    scenes, renders = multiview_set(world, rb_config, CORRESPONDENCE_PX)
    grids, dense = view_features(clip, renders)  # (S, V, h, w, C)
    pairs = binned_view_pairs(renders, grids, dense.stride, scenes.item_ids)
    if not pairs:
        pytest.fail("no view pair of the chosen scenes shows the main object in both views", pytrace=False)
    for pair in pairs:  # each pair's distances once for every threshold (it is scored in its bin and in "all")
        pair.chance_at(THRESHOLDS)
    for label in [f"{lo}-{hi}" for lo, hi in ANGLE_BINS] + ["all"]:
        chosen = [p for p in pairs if label in ("all", angle_bin(p.angle))]
        if not chosen:
            continue
        for t in THRESHOLDS:
            sc = score_pairs(chosen, t, seed=record.seed)
            cell = {"dataset": scenes.name, "n": sc.points, "condition": condition(threshold=f"{t:g}px", angle=label)}
            extra = {"recall": sc.recall, "same_position": sc.same_position, "chance": sc.chance,
                     "view_pairs": sc.view_pairs, "scenes": sc.scenes, "layer": dense.layer,
                     "stride_px": dense.stride, "grid": list(grids.shape[2:4]), "render_px": CORRESPONDENCE_PX,
                     # the per-scene sums as samples: a baseline comparison resamples the same scenes in both runs
                     "sample_keys": sorted(sc.per_scene),
                     "items_digest": items_digest([scenes.item_ids[s] for s in sc.scene_index])}
            record("correspondence_gain", sc.gain, ci=sc.gain_ci, samples=sc.per_scene, extra=extra, **cell)
            record("correspondence_recall", sc.recall, ci=sc.recall_ci, samples=sc.per_scene, extra=extra, **cell)


def test_multiview_consistency_world(clip, world, cache, record, rb_config):
    scenes, renders = multiview_set(world, rb_config)
    views = views_dataset(scenes, renders)
    head, templates = head_choices(clip, views, rb_config.templates)[0]
    pred = classifier_logits(clip, views, cache, templates=templates).argmax(1).reshape(len(scenes), -1)  # (S, V)
    record.proportion("consistency", (pred == pred[:, :1]).all(axis=1), dataset=scenes.name,
                      condition=condition(**head, views=pred.shape[1]),
                      extra={"top1_reference_view": float(np.mean(pred[:, 0] == scenes.labels)),
                             "top1_all_views": float(np.mean(pred == scenes.labels[:, None]))})
    for lo, hi in ANGLE_BINS:
        same = [pred[s, 0] == pred[s, k] for s, scene_views in enumerate(renders) for k in range(1, len(scene_views))
                if lo <= view_angle_deg(scene_views[0].camera, scene_views[k].camera) < hi]
        if same:
            record.proportion("consistency", np.array(same), dataset=scenes.name,
                              condition=condition(**head, angle=f"{lo}-{hi}"))
