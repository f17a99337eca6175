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


@pytest.mark.parametrize("arch, grid, channels, layer", [("world-rn-tiny", 2, 512, "resnet:layer4"),
                                                         ("world-vit-tiny", 8, 128, "vit:last-block-tokens")])
def test_dense_feature_shapes_and_stride(tiny_models, arch, grid, channels, layer):
    feats = dense_features(tiny_models[arch], images(3))
    assert feats.features.shape == (3, grid, grid, channels) and feats.features.dtype == np.float32
    assert feats.stride == 64 / grid and feats.layer == layer and np.isfinite(feats.features).all()
    one = dense_features(tiny_models[arch], images(3)[1:2])  # a batch does not change an image's features
    np.testing.assert_allclose(one.features[0], feats.features[1], rtol=1e-4, atol=1e-5)


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
