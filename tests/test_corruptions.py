"""2D (ImageNet-C) and depth-aware (3DCC-style) corruptions: determinism, severity monotonicity,
depth-dependence, reference helpers against scipy/matplotlib, errors, depth sources and conditions."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy import ndimage as ndi

from clip_robustness.fixtures import corruption_cells
from clip_robustness.fixtures import corruptions2d as c2d
from clip_robustness.fixtures import corruptions3d as c3d
from clip_robustness.fixtures.corruptions2d import ALL_FAMILIES, EXTRA_FAMILIES, FAMILIES, corrupt
from clip_robustness.fixtures.corruptions3d import DEPTH_FAMILIES, FAMILIES_3D, corrupt3d

# Families whose reference severity ladder does not grow the mean pixel distance, and why.
NOT_MONOTONE_IN_PIXELS = {
    "saturate": "severities 1-2 desaturate, 3-5 oversaturate (the reference ladder)",
    "elastic_transform": "the 64 px table's affine jitter is largest at severity 1 (5 px) and shrinks",
    "frost": "the image weight falls as the frost weight rises; both brighten about equally",
    "spatter": "severities 1-3 are water drops, 4-5 mud: two mechanisms whose pixel change depends on the image",
}


def scene(size: tuple[int, int] = (64, 64), seed: int = 0) -> np.ndarray:
    """A test image: smooth gradients, a bright disk and a patch of fine random texture, uint8."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rgb = np.stack([0.3 + 0.4 * x, 0.5 - 0.3 * y, 0.4 + 0.2 * np.sin(6 * x)], -1)
    rgb[(x - 0.5) ** 2 + (y - 0.45) ** 2 < 0.04] = (0.9, 0.3, 0.2)
    rng = np.random.default_rng(seed)
    texture = ndi.gaussian_filter(rng.random((h, w)), 1.2)  # fine, non-periodic detail
    rgb[h // 8: h // 2, w // 8: w // 2] = (texture[h // 8: h // 2, w // 8: w // 2, None] - 0.5) * 4 + 0.5
    noise = rng.normal(0, 0.02, rgb.shape)
    return np.round(np.clip(rgb + noise, 0, 1) * 255).astype(np.uint8)


def two_plane_depth(size: tuple[int, int] = (64, 64), near: float = 1.0, far: float = 10.0) -> np.ndarray:
    """Left half at ``near`` metres, right half at ``far``."""
    d = np.full(size, far)
    d[:, : size[1] // 2] = near
    return d


def dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


# ----------------------------------------------------------------------------- every family


@pytest.mark.parametrize("name", ALL_FAMILIES)
def test_2d_family_is_deterministic_per_item_and_keeps_shape(name):
    img = scene()
    a = corrupt(img, name, 3, item_id="item-1")
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, corrupt(img, name, 3, item_id="item-1"))
    np.testing.assert_array_equal(a, corrupt(img, name, 3, rng=c2d.corruption_rng("item-1", name, 3)))
    assert dist(a, img) > 0, f"{name} at severity 3 left the image unchanged"


@pytest.mark.parametrize("name", ALL_FAMILIES)
def test_2d_family_runs_on_large_non_square_images(name):
    img = scene((140, 170))
    out = corrupt(img, name, 5, item_id="x")
    assert out.shape == img.shape and c2d.table_for(img.shape) == "imagenet"


@pytest.mark.parametrize("name", FAMILIES_3D)
def test_3d_family_is_deterministic_per_item(name):
    img, depth = scene(), two_plane_depth()
    a = corrupt3d(img, name, 4, depth=depth, item_id="item-7", fov_deg=40)
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, corrupt3d(img, name, 4, depth=depth, item_id="item-7", fov_deg=40))
    assert dist(a, img) > 0


def test_random_families_differ_between_items_and_severities():
    img = scene()
    for name in ("gaussian_noise", "glass_blur", "fog", "frost", "elastic_transform", "spatter"):
        assert not np.array_equal(corrupt(img, name, 3, item_id="a"), corrupt(img, name, 3, item_id="b")), name
    assert c2d.corruption_rng("a", "fog", 1).random() != c2d.corruption_rng("a", "fog", 2).random()


@pytest.fixture(scope="module")
def world_images():
    """A few world test renders with their depth maps."""
    from clip_robustness.fixtures.datasets import world_dataset

    ds = world_dataset("test", n=6)
    return ds.images(), corruption_cells.world_depth_source(ds)(ds.item_ids)


@pytest.mark.parametrize("name", [f for f in ALL_FAMILIES if f not in NOT_MONOTONE_IN_PIXELS] + list(FAMILIES_3D))
def test_pixel_distance_grows_with_severity(name, world_images):
    images, depths = world_images

    draws = 1 if name in FAMILIES_3D else 3  # an expectation over the random draws, not one draw

    def run(k, severity, d):
        if name in FAMILIES_3D:
            return corrupt3d(images[k], name, severity, depth=depths[k], item_id=f"img{k}", fov_deg=40)
        return corrupt(images[k], name, severity, item_id=f"img{k}/{d}")

    mean = [np.mean([dist(run(k, s, d), images[k]) for k in range(len(images)) for d in range(draws)])
            for s in range(1, 6)]
    assert np.all(np.diff(mean) > 0), f"{name}: mean |corrupted - clean| by severity {np.round(mean, 2)}"


def test_transform_output_does_not_depend_on_the_batch():
    imgs = [scene(seed=s) for s in range(3)]
    ids = ["i0", "i1", "i2"]
    fn = corruption_cells.CorruptionTransform("shot_noise", 2)
    together = fn(imgs, ids)
    alone = corruption_cells.CorruptionTransform("shot_noise", 2)(imgs[2:], ids[2:])
    np.testing.assert_array_equal(together[2], alone[0])


# ----------------------------------------------------------------------------- depth-aware behaviour


def test_near_focus_blurs_far_pixels_more_and_far_focus_near_pixels_more():
    img = scene()
    depth = two_plane_depth()
    cols = slice(4, 28), slice(36, 60)  # away from the depth edge
    near = corrupt3d(img, "near_focus", 5, depth=depth, item_id="a")
    far = corrupt3d(img, "far_focus", 5, depth=depth, item_id="a")
    near_change = [dist(near[:, c], img[:, c]) for c in cols]  # (near half, far half)
    far_change = [dist(far[:, c], img[:, c]) for c in cols]
    assert near_change[1] > 3 * near_change[0]
    assert far_change[0] > 3 * far_change[1]


@given(st.integers(1, 5), st.floats(1.0, 12.0), st.floats(0.1, 4.0))
@settings(max_examples=25)
def test_near_focus_blur_radius_grows_with_depth(severity, base, step):
    depth = np.linspace(base, base + step * 10, 64 * 64).reshape(64, 64)
    radius = c3d.blur_radius_map(depth, severity, far=False, size=64).ravel()
    assert np.all(np.diff(radius) >= -1e-12)


def test_fog_3d_hides_far_pixels_more():
    img = scene()
    out = corrupt3d(img, "fog_3d", 2, depth=two_plane_depth(), item_id="a").astype(float)
    mean = img.astype(float).mean()
    assert np.abs(out[:, 40:] - mean).mean() < np.abs(out[:, :24] - mean).mean()


def test_camera_motion_leaves_points_at_infinity_and_moves_near_ones():
    img = scene()
    depth = two_plane_depth(far=np.inf)
    for name in ("xy_motion_blur", "z_motion_blur"):
        out = corrupt3d(img, name, 5, depth=depth, item_id="a", fov_deg=40)
        np.testing.assert_array_equal(out[:, 40:], img[:, 40:])
        assert dist(out[:, :28], img[:, :28]) > 1.0, name


def test_flash_brightens_near_surfaces_more():
    img = np.full((64, 64, 3), 100, np.uint8)
    out = corrupt3d(img, "flash", 5, depth=two_plane_depth(near=2.0, far=6.0), item_id="a", fov_deg=40).astype(float)
    assert out[:, :28].mean() > out[:, 36:].mean() > 100


def test_reshading_of_a_fronto_parallel_plane_falls_off_from_the_centre():
    shade = c3d.reshading(np.full((33, 33), 2.0), fov_deg=40)  # z-depth: the centre is the nearest point
    assert shade[16, 16] == pytest.approx(1.0) and shade[0, 0] < shade[16, 16]
    assert np.all(c3d.reshading(np.full((8, 8), np.inf), 40) == 0)


# ----------------------------------------------------------------------------- helpers vs references


@pytest.mark.parametrize("zoom", [1.0, 1.01, 1.07, 1.25, 1.31, 2.25, 4.5])
@pytest.mark.parametrize("shape", [(64, 64, 3), (50, 70, 3), (64, 64, 1)])
def test_clipped_zoom_matches_scipy_zoom(zoom, shape):
    img = np.random.default_rng(1).random(shape)
    h, w = shape[:2]
    ch, cw = int(np.ceil(h / zoom)), int(np.ceil(w / zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    ref = ndi.zoom(img[top:top + ch, left:left + cw], (zoom, zoom, 1), order=1)
    th, tw = (ref.shape[0] - h) // 2, (ref.shape[1] - w) // 2
    np.testing.assert_allclose(c2d.clipped_zoom(img, zoom), ref[th:th + h, tw:tw + w], atol=1e-12)


def test_bilinear_sample_matches_scipy_map_coordinates():
    rng = np.random.default_rng(2)
    x = rng.random((7, 9, 3))
    r, c = rng.uniform(-2, 9, (5, 4)), rng.uniform(-2, 11, (5, 4))
    ref = np.stack([ndi.map_coordinates(x[..., k], [r, c], order=1, mode="nearest") for k in range(3)], -1)
    np.testing.assert_allclose(c2d.bilinear_sample(x, r, c), ref, atol=1e-12)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_brightness_and_saturate_equal_an_hsv_round_trip(severity):
    x = np.random.default_rng(3).random((16, 16, 3))
    x[0, 0], x[0, 1], x[0, 2] = 0.0, 0.5, (0.2, 0.2, 0.2)  # black, gray, gray
    for name, channel in (("brightness", 2), ("saturate", 1)):
        c = c2d.TABLES["tiny"][name][severity - 1]
        scale, shift = (1.0, c) if name == "brightness" else c
        hsv = rgb_to_hsv(x)
        hsv[..., channel] = np.clip(hsv[..., channel] * scale + shift, 0, 1)
        np.testing.assert_allclose(c2d._FUNCS[name](x, c, None), hsv_to_rgb(hsv), atol=1e-12)


def _reference_glass_shuffle(img: np.ndarray, delta: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """The reference loop, literally: `x[h, w], x[h', w'] = x[h', w'], x[h, w]` on numpy rows."""
    x = img.copy()
    h, w = x.shape[:2]
    rows, cols = np.arange(h - delta, delta, -1), np.arange(w - delta, delta, -1)
    for _ in range(iterations):
        shifts = rng.integers(-delta, delta, size=(rows.size, cols.size, 2))
        for i, hh in enumerate(rows):
            for j, ww in enumerate(cols):
                dx, dy = shifts[i, j]
                x[hh, ww], x[hh + dy, ww + dx] = x[hh + dy, ww + dx], x[hh, ww]
    return x


def test_glass_blur_reproduces_the_reference_pixel_shuffle():
    img = scene((24, 24))
    sigma, delta, iterations = 0.6, 2, 2
    ours = c2d._glass_blur(img / 255.0, (sigma, delta, iterations), np.random.default_rng(5))
    blurred = np.floor(np.clip(c2d.gaussian_blur_image(img / 255.0, sigma), 0, 1) * 255)
    shuffled = _reference_glass_shuffle(blurred, delta, iterations, np.random.default_rng(5))
    np.testing.assert_allclose(ours, c2d.gaussian_blur_image(shuffled / 255.0, sigma), atol=1e-12)


def test_noise_families_have_the_reference_strength():
    img = np.full((128, 128, 3), 128, np.uint8)  # 128 px: the ImageNet table
    noisy = corrupt(img, "gaussian_noise", 1, item_id="n").astype(float) / 255
    assert np.std(noisy) == pytest.approx(c2d.TABLES["imagenet"]["gaussian_noise"][0], rel=0.05)
    flipped = corrupt(img, "impulse_noise", 5, item_id="n")
    assert np.mean(flipped != 128) == pytest.approx(c2d.TABLES["imagenet"]["impulse_noise"][4], rel=0.05)


def test_defocus_kernel_and_plasma_fractal():
    k = c2d.defocus_kernel(3, 0.1)
    assert k.sum() == pytest.approx(1.0) and k[8, 8] == k.max() and np.allclose(k, k.T)
    p = c2d.plasma_fractal(64, 2.0, np.random.default_rng(0))
    assert p.shape == (64, 64) and p.min() == 0 and p.max() == 1
    with pytest.raises(ValueError, match="power of two"):
        c2d.plasma_fractal(60, 2.0, np.random.default_rng(0))


def test_reference_tables_cover_every_family_with_five_severities():
    assert len(FAMILIES) == 15 and len(EXTRA_FAMILIES) == 4
    for table in c2d.TABLES.values():
        assert set(table) == set(ALL_FAMILIES)
        assert all(len(v) == 5 for v in table.values())


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    img = scene()
    with pytest.raises(ValueError, match="Did you mean 'gaussian_noise'"):
        corrupt(img, "gausian_noise", 1, item_id="a")
    with pytest.raises(ValueError, match="severity must be an int in 1..5"):
        corrupt(img, "fog", 6, item_id="a")
    with pytest.raises(TypeError, match="uint8 RGB image"):
        corrupt(img.astype(float), "fog", 1, item_id="a")
    with pytest.raises(ValueError, match="needs rng= or item_id="):
        corrupt(img, "fog", 1)
    with pytest.raises(ValueError, match="is depth-aware"):
        corrupt3d(img, "near_focus", 1, item_id="a")
    with pytest.raises(ValueError, match="does not match the image"):
        corrupt3d(img, "fog_3d", 1, depth=np.ones((8, 8)), item_id="a")
    with pytest.raises(ValueError, match="positive"):
        corrupt3d(img, "fog_3d", 1, depth=np.zeros((64, 64)), item_id="a")
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt3d(img, "fog", 1, item_id="a")


# ----------------------------------------------------------------------------- conditions and depth sources


def test_conditions_have_canonical_specs_and_reuse_corrupted_pixels():
    cond = corruption_cells.corruption_condition("fog", 3)
    assert cond.spec == f"corruption=fog;impl={c2d.IMPL_VERSION};severity=3"
    imgs, ids = [scene()], ["memo-test-item"]
    first = cond(imgs, ids)
    again = corruption_cells.corruption_condition("fog", 3)
    assert again(imgs, ids) is first and again.fn.throughput.images == 0  # served from the per-process memo
    assert cond.fn.throughput.images == 1 and cond.fn.throughput.seconds > 0
    c3 = corruption_cells.corruption3d_condition("near_focus", 2, lambda ids: [two_plane_depth()] * len(ids),
                                                 depth_key="k1")
    assert "depth=k1" in c3.spec and "severity=2" in c3.spec
    assert "depth" not in corruption_cells.corruption3d_condition("iso_noise", 2).spec
    with pytest.raises(ValueError, match="needs depth maps"):
        corruption_cells.corruption3d_condition("fog_3d", 2)([scene()], ["x"])


def test_fit_depth_resizes_by_nearest_neighbour():
    depth = np.arange(6, dtype=np.float64).reshape(2, 3)
    assert c3d.fit_depth(depth, (2, 3, 3)) is depth
    np.testing.assert_array_equal(c3d.fit_depth(depth, (4, 6, 3)), np.kron(depth, np.ones((2, 2))))
    np.testing.assert_array_equal(c3d.fit_depth(np.kron(depth, np.ones((2, 2))), (2, 3)), depth)


def test_pixel_libraries_import_nothing_of_the_harness():
    """corruptions2d/3d are pure image code: importing them loads no other harness module, pytest or torch."""
    import subprocess
    import sys

    code = ("import sys, clip_robustness.fixtures.corruptions3d; print(sorted(m for m in sys.modules if "
            "m.startswith(('clip_robustness.', 'pytest', '_pytest', 'torch'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == str(["clip_robustness.fixtures", "clip_robustness.fixtures.corruptions2d",
                                  "clip_robustness.fixtures.corruptions3d"])


def test_world_depth_source_re_renders_the_depth_of_each_item():
    from clip_robustness.fixtures.datasets import world_dataset
    from clip_robustness.fixtures.world import SceneSpec, render_batch

    ds = world_dataset("test", n=3)
    maps = corruption_cells.world_depth_source(ds)(list(reversed(ds.item_ids)))
    _, depth = render_batch([SceneSpec.from_dict(m) for m in ds.meta])
    np.testing.assert_array_equal(maps[0], depth[2])
    np.testing.assert_array_equal(corruption_cells.world_depth_source(ds.subset([2, 0], ""))([ds.item_ids[0]])[0],
                                  depth[0])  # a subset maps its own ids
    with pytest.raises(ValueError, match="world datasets"):
        corruption_cells.world_depth_source(ds.__class__("x", ("a",), np.zeros(1, int), ("i",), loader=lambda i: []))


def test_folder_depth_source_reads_npy_metres_and_png_in_512ths(tmp_path):
    from clip_robustness.fixtures.datasets import DatasetError, image_folder

    images, depth = tmp_path / "images", tmp_path / "depth"
    for name in ("a", "b"):
        (images / "cls").mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene((32, 32))).save(images / "cls" / f"{name}.png")
    (depth / "cls").mkdir(parents=True)
    np.save(depth / "cls" / "a.npy", np.full((32, 32), 3.0))
    raw = np.full((32, 32), 1024, np.uint16)
    raw[0, 0] = 0
    Image.fromarray(raw).save(depth / "cls" / "b.png")
    ds = image_folder("mine", images)
    load, digest = corruption_cells.folder_depth_source(ds, depth)
    a, b = load(ds.item_ids)
    assert np.all(a == 3.0) and b[1, 1] == 2.0 and np.isinf(b[0, 0]) and len(digest) == 16
    (depth / "cls" / "b.png").unlink()
    with pytest.raises(DatasetError, match="no depth map for cls/b.png"):
        corruption_cells.folder_depth_source(ds, depth)


def test_corruption_folder_cells_read_the_published_layout(tmp_path):
    from clip_robustness.fixtures.datasets import DatasetError

    for family, severity in (("fog", 1), ("fog", 3), ("blur_group/defocus_blur", 2)):
        folder = tmp_path / family / str(severity) / "n01440764"
        folder.mkdir(parents=True)
        Image.fromarray(scene((32, 32))).save(folder / "x.JPEG")
    cells = corruption_cells.corruption_folder_cells("imagenet-c", tmp_path, ALL_FAMILIES, limit=None)
    assert sorted((c.family, c.severity) for c in cells) == [("defocus_blur", 2), ("fog", 1), ("fog", 3)]
    assert cells[0].dataset.labels.tolist() == [0] and cells[0].condition is None
    with pytest.raises(DatasetError, match="found none"):
        corruption_cells.corruption_folder_cells("imagenet-3dcc", tmp_path, DEPTH_FAMILIES, limit=None)


def test_throughput_counts_every_image_when_worker_threads_add_at_once():
    from concurrent.futures import ThreadPoolExecutor

    counter = corruption_cells.Throughput()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: [counter.add(0.001, 1) for _ in range(2000)], range(8)))
    assert counter.images == 16000 and counter.seconds == pytest.approx(16.0)
    assert counter.images_per_s() == pytest.approx(1000.0) and corruption_cells.Throughput().images_per_s() is None


def _grid_rows(tmp_path, monkeypatch, present, families=ALL_FAMILIES):
    """The rows record_corruption_grid records for an ImageNet-C copy holding ``present`` (family folder,
    severities) cells of two images, with a model that is right on every image (no model loads)."""
    from types import SimpleNamespace

    from clip_robustness.fixtures.cache import EmbeddingCache
    from clip_robustness.plugins.recorder import Recorder

    for folder_name, severities in present:
        for severity in severities:
            folder = tmp_path / "c" / folder_name / str(severity) / "n01440764"
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(scene((32, 32))).save(folder / f"x{i}.JPEG")
    cells = corruption_cells.corruption_folder_cells("imagenet-c", tmp_path / "c", families, limit=None)
    monkeypatch.setattr(corruption_cells, "cell_logits", lambda clip, cell, cache, templates:
                        np.eye(1000, dtype=np.float32)[cell.dataset.labels])  # (N, 1000), always right
    rows, clip = [], SimpleNamespace(id="embedded:rn-clip")
    record = Recorder("t.py::test", "corruption2d", clip, 0, tmp_path / "samples", EmbeddingCache(tmp_path / "cache"),
                      sink=rows.append, gate=lambda row, s: None)
    corruption_cells.record_corruption_grid(clip, None, cells, None, record, head={}, templates="openai",
                                            dataset_name="imagenet-c", families=families)
    return rows


def test_the_mean_of_a_partial_imagenet_c_copy_says_what_it_covers(tmp_path, monkeypatch):
    """12 of the 95 cells: their mean is another number than the whole grid's, so it is recorded under a
    condition naming what it covers (no rule or baseline cell written for ``corruption=mean`` matches it) and
    says what is missing; the package's default mean gate is the world grid's only."""
    from clip_robustness.plugins.config import DEFAULT_THRESHOLDS, load_thresholds_file
    from clip_robustness.plugins.gates import select_threshold

    rows = _grid_rows(tmp_path, monkeypatch, [("gaussian_noise", range(1, 6)), ("blur/defocus_blur", range(1, 6)),
                                              ("fog", (1, 2))])
    (mean,) = [r for r in rows if "mean" in r["condition"]]
    assert mean["condition"] == "corruption=partial-mean;covers=gaussian_noise,defocus_blur,fog:1-2"
    assert mean["value"] == 1.0 and mean["extra"]["cells"] == 12 and mean["extra"]["grid_cells"] == 95
    assert mean["extra"]["missing"].startswith("shot_noise,impulse_noise,glass_blur,")
    assert ",fog:3-5," in mean["extra"]["missing"] and mean["extra"]["missing"].endswith(",saturate")
    rules = load_thresholds_file(DEFAULT_THRESHOLDS)
    assert select_threshold(rules, mean) is None
    assert select_threshold(rules, {**mean, "dataset": "world:test", "condition": "corruption=mean;templates=openai"})
    # the whole grid of the families asked for keeps its mean's name
    whole = _grid_rows(tmp_path / "whole", monkeypatch, [("fog", range(1, 6)), ("snow", range(1, 6))], ("snow", "fog"))
    assert [r["condition"] for r in whole if "mean" in r["condition"]] == ["corruption=mean"]


def test_a_cell_of_one_image_has_no_interval_and_says_why(tmp_path):
    """A two-sample ratio (ImageNet-C cell against ImageNet val) or mCE over one image: no bootstrap interval
    (scipy refuses a sample of one), for that reason rather than a zero denominator."""
    from types import SimpleNamespace

    from clip_robustness.plugins import stats

    record = SimpleNamespace(interval=lambda statistic, *arrays, two_sample=False:
                             stats.bootstrap_ci_two_sample(statistic, *arrays) if two_sample
                             else stats.bootstrap_ci(statistic, *arrays))
    ratio = corruption_cells.RATIO
    assert corruption_cells.interval_or_none(record, ratio, np.ones(1), np.ones(4), two_sample=True) == \
        (None, stats.too_few_to_resample(1, 4))
    ci, why = corruption_cells.interval_or_none(record, ratio, np.ones(1), np.ones(1))
    assert ci is None and why.startswith("no confidence interval: a bootstrap needs at least 2 items")
    ci, why = corruption_cells.interval_or_none(record, ratio, np.array([1.0, 0.0, 1.0]), np.ones(3))
    assert why is None and ci[0] <= 2 / 3 <= ci[1]
