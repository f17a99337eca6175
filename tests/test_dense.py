"""Dense features of open_clip towers and nearest-neighbour correspondence matching."""
from __future__ import annotations

import numpy as np
import pytest

from clip_robustness.fixtures.dense import (chance_recall, dense_features, match_points, object_pixels, sample_at,
                            view_angle_deg)
from clip_robustness.plugins.metrics import correspondence_recall


@pytest.fixture(scope="module")
def tiny_models():
    from clip_robustness.fixtures.models import load_model, parse_model_spec

    return {name: load_model(parse_model_spec(f"{name}:random")) for name in ("world-rn-tiny", "world-vit-tiny")}


def images(n: int, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("arch, size, grid, channels, layer", [
    ("world-rn-tiny", 64, 4, 256, "resnet:layer3"), ("world-rn-tiny", 128, 8, 256, "resnet:layer3"),
    ("world-vit-tiny", 64, 8, 128, "vit:last-block-tokens"), ("world-vit-tiny", 128, 8, 128, "vit:last-block-tokens")])
def test_dense_feature_shapes_and_stride(tiny_models, arch, size, grid, channels, layer):
    """A ResNet sees the image at its own size (layer3: stride 16); a ViT at the model's 64 px."""
    feats = dense_features(tiny_models[arch], images(3, size))
    assert feats.features.shape == (3, grid, grid, channels) and feats.features.dtype == np.float32
    assert feats.stride == size / grid and feats.layer == layer and np.isfinite(feats.features).all()
    one = dense_features(tiny_models[arch], images(3, size)[1:2])  # a batch does not change an image's features
    np.testing.assert_allclose(one.features[0], feats.features[1], rtol=1e-4, atol=1e-5)


def test_dense_feature_stages(tiny_models):
    rn, vit = tiny_models["world-rn-tiny"], tiny_models["world-vit-tiny"]
    assert dense_features(rn, images(1), stage="layer4").features.shape == (1, 2, 2, 512)
    assert dense_features(rn, images(1), stage="layer2").features.shape == (1, 8, 8, 128)
    assert dense_features(vit, images(1), stage="block-1").layer == "vit:block-1-tokens"
    with pytest.raises(ValueError, match="unknown stage 'layer9'.*layer1"):
        dense_features(rn, images(1), stage="layer9")


def test_vit_tokens_are_the_last_block_output(tiny_models):
    """The patch tokens equal the last resblock's output captured by a forward hook (before ln_post)."""
    import torch
    from PIL import Image

    model = tiny_models["world-vit-tiny"]
    visual = model.model.visual
    captured = {}
    handle = visual.transformer.resblocks[-1].register_forward_hook(lambda m, i, o: captured.update(out=o))
    try:
        with torch.inference_mode():
            pixels = torch.stack([model.preprocess(Image.fromarray(im)) for im in images(2)])
            visual(pixels)
    finally:
        handle.remove()
    tokens = captured["out"]
    tokens = tokens if visual.transformer.batch_first else tokens.transpose(0, 1)  # (B, 1 + 64, C)
    expected = tokens[:, 1:].reshape(2, 8, 8, -1).numpy()
    np.testing.assert_allclose(dense_features(model, images(2)).features, expected, rtol=1e-4, atol=1e-5)


def test_dense_features_reject_bad_input(tiny_models):
    with pytest.raises(ValueError, match="square images of one size"):
        dense_features(tiny_models["world-rn-tiny"], [np.zeros((64, 48, 3), np.uint8)])
    with pytest.raises(ValueError, match="at least one image"):
        dense_features(tiny_models["world-rn-tiny"], [])
    with pytest.raises(TypeError, match="LoadedModel"):
        dense_features(tiny_models["world-rn-tiny"].model, images(1))


def test_sample_at_interpolates_a_linear_feature_exactly():
    # cell (i, j) of a stride-8 grid is centred on pixel (8 j + 3.5, 8 i + 3.5); feature = its centre
    stride, n = 8.0, 6
    centres = (np.arange(n) + 0.5) * stride - 0.5
    grid = np.stack(np.meshgrid(centres, centres, indexing="xy"), -1)  # (h, w, 2) = (x, y)
    pts = np.array([[3.5, 3.5], [10.0, 20.25], [30.0, 7.0], [43.5, 43.5]])
    np.testing.assert_allclose(sample_at(grid, pts, stride), pts, atol=1e-12)
    np.testing.assert_allclose(sample_at(grid, [[0.0, 47.0]], stride), [[3.5, 43.5]])  # clamped outside
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        sample_at(grid, np.zeros(3), stride)


def positional_grid(size: int, offset: np.ndarray, dims: int = 256, scale: float = 0.7) -> np.ndarray:
    """Random Fourier features of (pixel + offset): cosine similarity peaks where positions agree."""
    rng = np.random.default_rng(42)
    freq, phase = rng.normal(0, scale, (2, dims)), rng.uniform(0, 2 * np.pi, dims)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    pos = np.stack([xx, yy], -1) + offset  # (H, W, 2)
    return np.cos(pos @ freq + phase)  # (H, W, dims)


def test_features_that_encode_position_recover_every_correspondence():
    size, shift = 48, np.array([5.0, -3.0])  # view b is view a moved by `shift` pixels
    grid_a, grid_b = positional_grid(size, 0.0), positional_grid(size, -shift)
    rng = np.random.default_rng(1)
    pts_a = rng.integers(8, 40, (200, 2)).astype(float)
    true_b = pts_a + shift
    candidates = np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).reshape(-1, 2).astype(float)
    pred = match_points(grid_a, grid_b, pts_a, candidates, stride=1.0)
    assert correspondence_recall(pred, true_b, thresholds=(1.0,)) == {1.0: 1.0}


def test_random_features_match_at_chance():
    size = 32
    rng = np.random.default_rng(3)
    grid_a, grid_b = rng.normal(size=(size, size, 64)), rng.normal(size=(size, size, 64))
    pts_a = rng.integers(0, size, (2000, 2)).astype(float)
    true_b = np.clip(pts_a + rng.integers(-3, 4, pts_a.shape), 0, size - 1)
    candidates = np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).reshape(-1, 2).astype(float)
    pred = match_points(grid_a, grid_b, pts_a, candidates, stride=1.0)
    thresholds = (2.0, 6.0)
    got = correspondence_recall(pred, true_b, thresholds=thresholds)
    expected = chance_recall(true_b, candidates, thresholds)
    for t in thresholds:  # within 4 binomial standard errors of the chance rate
        se = np.sqrt(expected[t] * (1 - expected[t]) / len(pts_a))
        assert abs(got[t] - expected[t]) < 4 * se, (t, got[t], expected[t])


def test_chance_recall_by_hand():
    cand = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [9.0, 0.0]])
    assert chance_recall(np.array([[0.0, 0.0]]), cand, (1.5, 6.0)) == {1.5: 0.5, 6.0: 0.75}


def test_world_points_as_features_recover_world_correspondences():
    """End to end on the world: features = random Fourier features of each pixel's 3D point."""
    from clip_robustness.fixtures.world import SceneSpec, correspondences, render_views

    spec = SceneSpec(shape="cube", pattern="plain", camera=(30.0, 25.0, 4.3))
    views = render_views(spec, [(30.0, 25.0, 4.3), (55.0, 25.0, 4.3)])
    rng = np.random.default_rng(0)
    freq, phase = rng.normal(0, 6.0, (3, 256)), rng.uniform(0, 2 * np.pi, 256)
    grids = [np.cos(np.nan_to_num(v.points, nan=99.0) @ freq + phase) for v in views]  # (H, W, 256)
    pts_a, true_b = correspondences(views[0], views[1], max_points=150)
    pred = match_points(grids[0], grids[1], pts_a, object_pixels(views[1].mask), stride=1.0)
    assert len(pts_a) > 50
    assert correspondence_recall(pred, true_b, thresholds=(2.0,))[2.0] > 0.95
    el, d_az = np.radians(25.0), np.radians(25.0)  # two cameras on one elevation circle
    exact = np.degrees(np.arccos(np.cos(el) ** 2 * np.cos(d_az) + np.sin(el) ** 2))
    assert view_angle_deg(views[0].camera, views[1].camera) == pytest.approx(exact)


def test_view_angle_and_object_pixels():
    assert view_angle_deg((10.0, 0.0, 4.0), (10.0, 0.0, 9.0)) == pytest.approx(0.0, abs=1e-6)
    assert view_angle_deg((0.0, 0.0, 4.0), (90.0, 0.0, 4.0)) == pytest.approx(90.0)
    mask = np.zeros((4, 5), int)
    mask[1, 3] = mask[2, 0] = 1
    np.testing.assert_array_equal(object_pixels(mask), [[3.0, 1.0], [0.0, 2.0]])


# ----------------------------------------------------------------------------- the multi-view headline


@pytest.fixture(scope="module")
def multiview_scenes():
    """The correspondence set of the multiview property: 40 test scenes, 5 views each, at 128 px."""
    from clip_robustness.fixtures.datasets import world_dataset
    from clip_robustness.fixtures.multiview import render_multiview
    from clip_robustness.fixtures.world import SceneSpec

    scenes = world_dataset("test", n=40)
    seeds = [int(item.rsplit(":", 1)[1]) for item in scenes.item_ids]
    return scenes, render_multiview([SceneSpec.from_dict(m) for m in scenes.meta], seeds, 128)


def _headline(renders, keys, grids, stride, threshold, angles=(0.0, 120.0)):
    from clip_robustness.fixtures.multiview import match_view_pairs, score_pairs

    pairs = [p for p in match_view_pairs(renders, grids, stride, keys) if angles[0] <= p.angle < angles[1]]
    return score_pairs(pairs, threshold, seed=0)


def _rn_clip_grids(renders):
    from clip_robustness.fixtures.models import load_model, parse_model_spec

    dense = dense_features(load_model(parse_model_spec("embedded:rn-clip")), [v.rgb for vs in renders for v in vs])
    return dense.features.reshape(len(renders), len(renders[0]), *dense.features.shape[1:]), dense.stride


def _shuffled(grids: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each image's grid cells in a random order of their own (S, V, h, w, C): the features keep their
    statistics but lose where they were."""
    rng = np.random.default_rng(seed)
    s, v, h, w, c = grids.shape
    flat = grids.reshape(s * v, h * w, c)
    return np.stack([cells[rng.permutation(h * w)] for cells in flat]).reshape(grids.shape)


def test_position_only_features_score_zero_gain(multiview_scenes):
    """Features that encode only the image position (the same in every view): no 3D awareness, so the
    headline is zero within its CI at every threshold, although their recall is far above chance."""
    scenes, renders = multiview_scenes
    grid = positional_grid(128, np.zeros(2), scale=0.5)  # (128, 128, 256)
    grids = np.broadcast_to(grid, (len(renders), len(renders[0]), *grid.shape))
    for t in (4.0, 8.0, 16.0):
        sc = _headline(renders, scenes.item_ids, grids, 1.0, t)
        assert sc.gain_ci[0] <= 0.0 <= sc.gain_ci[1] and abs(sc.gain) < 0.01, (t, sc)
        assert sc.recall > sc.chance + 0.05, (t, sc)


def test_shuffled_rn_clip_features_lose_their_gain(multiview_scenes):
    """rn-clip with each image's dense features spatially shuffled (a fixed seed): in the report's headline
    cell (views 90-120 degrees apart, at which same-position recall is at chance level) its gain is
    zero within its CI. Over all pairs its recall is at about chance, below same position, so the headline
    is below zero (the gain does not reward features that carry nothing), while the real rn-clip's is
    above zero."""
    from clip_robustness.plugins.properties import PROPERTIES

    scenes, renders = multiview_scenes
    grids, stride = _rn_clip_grids(renders)
    shuffled = _shuffled(grids)
    headline_angles = tuple(map(float, PROPERTIES["multiview"].preferred["angle"].split("-")))  # the report's cell
    for t in (4.0, 8.0, 16.0):
        wide = _headline(renders, scenes.item_ids, shuffled, stride, t, angles=headline_angles)
        assert wide.gain_ci[0] <= 0.0 <= wide.gain_ci[1], (t, wide)
        every = _headline(renders, scenes.item_ids, shuffled, stride, t)
        assert every.gain_ci[1] < 0.0, (t, every)
    real = _headline(renders, scenes.item_ids, grids, stride, 4.0)
    assert real.gain_ci[0] > 0.0, real


def test_score_pairs_by_hand():
    """Two scenes, three points, threshold 4 px (strict): recall 2/3, same position 1/3 (an error of exactly
    4 px is a miss), gain 1/3, chance 1/3; the recall is plugins.metrics.correspondence_recall's."""
    from clip_robustness.fixtures.multiview import ViewPair, score_pairs
    from clip_robustness.plugins.metrics import correspondence_recall

    cand = np.array([[0.0, 0.0], [100.0, 100.0]])
    pairs = [ViewPair(0, 45.0, np.array([[1.0, 0.0], [10.0, 5.0]]), np.array([[0.0, 0.0], [10.0, 0.0]]), cand,
                      np.array([[4.0, 0.0], [10.0, 0.0]])),
             ViewPair(1, 45.0, np.array([[0.0, 0.0]]), np.array([[0.0, 0.0]]), cand, np.array([[9.0, 9.0]]))]
    sc = score_pairs(pairs, 4.0, seed=0)
    assert (sc.recall, sc.same_position, sc.gain, sc.chance) == pytest.approx((2 / 3, 1 / 3, 1 / 3, 1 / 3))
    assert (sc.points, sc.view_pairs, sc.scenes) == (3, 2, 2)
    pred = np.concatenate([p.predicted for p in pairs])
    true = np.concatenate([p.true for p in pairs])
    assert sc.recall == pytest.approx(correspondence_recall(pred, true, thresholds=(4.0,))[4.0])
