"""3D awareness: dense correspondence across views and multi-view prediction consistency.

Each world test scene is rendered from its reference camera and from four more cameras at the
same elevation and distance, 15, 45, 75 and 105 degrees of azimuth away (``render_views``: the
same world, known geometry). Views are binned by the 3D angle between the viewing directions,
NAVI-style: 0-30, 30-60, 60-90, 90-120 degrees.

* ``correspondence_recall``: up to 100 ground-truth correspondences of the main object per view
  pair (``clip_robustness.fixtures.world.correspondences``, visible in both views) are matched by nearest
  neighbour in the tower's dense features (``clip_robustness.fixtures.dense``: ViT last-block patch tokens,
  ResNet ``layer4``), sampled bilinearly at the source pixel and compared by cosine with every
  main-object pixel of the target view; recall at 2, 4 and 8 px (of a 64 px image; NAVI's
  5/25/50 px are for ~500 px images), one row per threshold and angle bin (condition
  ``angle=LO-HI;threshold=Npx``, plus ``angle=all``). The CI resamples view pairs (points of one
  pair are not independent); ``extra.chance`` is the recall of a uniform random match and
  ``extra.same_position`` that of the 2D baseline "the object pixel at the source pixel's position"
  (features that only encode image position reach it without any 3D awareness).
* ``consistency``: the fraction of scenes whose zero-shot prediction is the same in every view
  (``views=5``), and between the reference view and each angle bin's views (``angle=LO-HI``).

Run size: the first 40 test scenes (200 renders) by default; ``--limit N`` sets the number of scenes.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pytest

from clip_robustness.fixtures.conditions import condition
from clip_robustness.fixtures.datasets import ImageDataset
from clip_robustness.fixtures.dense import chance_recall, dense_features, match_points, object_pixels, view_angle_deg
from clip_robustness.fixtures.embed import classifier_logits, head_choices
from clip_robustness.fixtures.world import SceneSpec, correspondences, render_views
from clip_robustness.plugins.metrics import correspondence_recall
from clip_robustness.plugins.stats import bootstrap_ci

pytestmark = pytest.mark.multiview

DEFAULT_SCENES = 40
AZIMUTH_OFFSETS = (15.0, 45.0, 75.0, 105.0)
ANGLE_BINS = ((0, 30), (30, 60), (60, 90), (90, 120))
THRESHOLDS = (2.0, 4.0, 8.0)
POINTS_PER_PAIR = 100


def _wrap(azimuth: float) -> float:
    return (azimuth + 180.0) % 360.0 - 180.0


def multiview_set(world, rb_config) -> tuple[ImageDataset, list[list]]:
    """The scenes and their renders: ``renders[s][0]`` is the reference view of scene s."""
    scenes = world("test").head(DEFAULT_SCENES if rb_config.limit is None else None)
    renders = []
    for item, meta in zip(scenes.item_ids, scenes.meta):
        spec = SceneSpec.from_dict(meta)
        size, seed = (int(v) for v in item.rsplit("@", 1)[1].split(":"))
        az, el, dist = spec.camera
        cameras = [spec.camera] + [(_wrap(az + d), el, dist) for d in AZIMUTH_OFFSETS]
        renders.append(render_views(spec, cameras, size=size, seed=seed))
    return scenes, renders


def views_dataset(scenes: ImageDataset, renders: list[list]) -> ImageDataset:
    """Every view of every scene as one classification dataset (scene-major), for the cache."""
    n_views = len(renders[0])
    rgb = [view.rgb for views in renders for view in views]
    ids = tuple(f"{item}/view={','.join(f'{c:g}' for c in view.camera)}"
                for item, views in zip(scenes.item_ids, renders) for view in views)
    return ImageDataset(f"{scenes.name}:multiview", scenes.classnames, np.repeat(scenes.labels, n_views), ids,
                        loader=lambda idx: [rgb[i] for i in idx])


def _pooled_recall(hits: np.ndarray, sizes: np.ndarray) -> float:
    """Recall over the points of some view pairs, from their hit counts and sizes (P,)."""
    return float(hits.sum() / sizes.sum())


def _bin_label(angle: float) -> str | None:
    return next((f"{lo}-{hi}" for lo, hi in ANGLE_BINS if lo <= angle < hi), None)


@dataclass(frozen=True)
class ViewPair:
    """The reference view of a scene matched against one other view of it."""

    angle_bin: str
    predicted: np.ndarray  # (K, 2) matched target pixels
    true: np.ndarray  # (K, 2) ground-truth target pixels
    candidates: np.ndarray  # (M, 2) main-object pixels of the target view
    same_position: np.ndarray  # (K, 2) the candidate nearest each source pixel's own position (2D baseline)


def match_view_pairs(scenes: ImageDataset, renders: list[list], grids: np.ndarray, stride: float) -> list[ViewPair]:
    pairs = []
    for s, (item, views) in enumerate(zip(scenes.item_ids, renders)):
        for k in range(1, len(views)):
            pts_a, pts_b = correspondences(views[0], views[k], max_points=POINTS_PER_PAIR,
                                           rng=np.random.default_rng(zlib.crc32(f"{item}/{k}".encode())))
            label = _bin_label(view_angle_deg(views[0].camera, views[k].camera))
            if len(pts_a) == 0 or label is None:  # the object is not visible in both views
                continue
            candidates = object_pixels(views[k].mask)
            nearest = np.linalg.norm(pts_a[:, None] - candidates[None], axis=-1).argmin(1)
            pairs.append(ViewPair(label, match_points(grids[s, 0], grids[s, k], pts_a, candidates, stride),
                                  pts_b, candidates, candidates[nearest]))
    return pairs


def test_correspondence_world(clip, world, record, rb_config):
    scenes, renders = multiview_set(world, rb_config)
    dense = dense_features(clip, [v.rgb for views in renders for v in views])
    grids = dense.features.reshape(len(scenes), len(renders[0]), *dense.features.shape[1:])  # (S, V, h, w, C)
    pairs = match_view_pairs(scenes, renders, grids, dense.stride)
    if not pairs:
        pytest.fail("no view pair of the chosen scenes shows the main object in both views", pytrace=False)
    for label in [f"{lo}-{hi}" for lo, hi in ANGLE_BINS] + ["all"]:
        chosen = [p for p in pairs if label in ("all", p.angle_bin)]
        if not chosen:
            continue
        true = np.concatenate([p.true for p in chosen])  # (K, 2)
        recall = correspondence_recall(np.concatenate([p.predicted for p in chosen]), true, thresholds=THRESHOLDS)
        baseline = correspondence_recall(np.concatenate([p.same_position for p in chosen]), true,
                                         thresholds=THRESHOLDS)
        sizes = np.array([len(p.true) for p in chosen], dtype=float)  # (P,) points per view pair
        chance = [chance_recall(p.true, p.candidates, THRESHOLDS) for p in chosen]
        for t in THRESHOLDS:
            hits = np.array([np.sum(np.linalg.norm(p.predicted - p.true, axis=1) < t) for p in chosen], dtype=float)
            ci = bootstrap_ci(_pooled_recall, hits, sizes, seed=record.seed) if len(chosen) > 1 else None
            record("correspondence_recall", recall[t], dataset=scenes.name, ci=ci, n=int(sizes.sum()),
                   condition=condition(threshold=f"{t:g}px", angle=label),
                   extra={"chance": float(np.dot([c[t] for c in chance], sizes) / sizes.sum()),
                          "same_position": baseline[t], "view_pairs": len(chosen), "layer": dense.layer,
                          "stride_px": dense.stride, "grid": list(grids.shape[2:4])})


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
