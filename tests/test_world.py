"""Tests of the procedural world: determinism, exact interventions, geometry, multi-view, export, splits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clip_robustness.fixtures.world import (ALL_CLASSES, CLASS_TEXTURE, COLORS, FACTORS, FIELDS, HELDOUT_CLASSES,
                            ID_CLASSES, LIGHT_COLORS, OCCLUDERS, PATTERNS, SPLITS, STYLES, TRAIN_BACKGROUNDS,
                            SceneSpec, captions, correspondences, object_placements, project, render,
                            render_batch, render_views, sample_specs, sdf)
from clip_robustness.fixtures.world.backdrops import FLOOR_Y
from clip_robustness.fixtures.world.cli import main as cli_main
from clip_robustness.fixtures.world.renderer import camera_frames

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=20, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

# Specs over the whole factor space (small enough ranges that the object is in frame).
_angles = st.floats(-180, 180, allow_nan=False)
specs_st = st.builds(
    SceneSpec,
    shape=st.sampled_from(ALL_CLASSES), color=st.sampled_from(tuple(COLORS)),
    pattern=st.sampled_from(PATTERNS), size=st.floats(0.6, 1.3),
    pose=st.tuples(_angles, _angles, _angles),
    camera=st.tuples(st.floats(0, 360), st.floats(-30, 80), st.floats(3.5, 6.0)),
    offset=st.tuples(st.floats(-0.4, 0.4), st.floats(-0.4, 0.4)),
    background=st.sampled_from(FACTORS["background"]),
    light=st.tuples(st.floats(-180, 180), st.floats(-30, 90), st.floats(0.3, 2.0)),
    light_color=st.sampled_from(tuple(LIGHT_COLORS)),
    occluder=st.sampled_from((None,) + OCCLUDERS), occluder_offset=st.floats(-0.4, 0.4),
    extras=st.sampled_from(FACTORS["extras"]), style=st.sampled_from(STYLES),
)


# ----------------------------------------------------------------------------- vocabulary and specs


def test_vocabulary() -> None:
    assert len(ID_CLASSES) >= 10 and len(HELDOUT_CLASSES) >= 4
    assert not set(ID_CLASSES) & set(HELDOUT_CLASSES)
    assert all("_" not in c for c in ALL_CLASSES)  # natural words for prompts
    assert set(CLASS_TEXTURE) == set(ID_CLASSES)
    assert len(set(CLASS_TEXTURE.values())) == len(ID_CLASSES)  # distinct per class
    assert set(CLASS_TEXTURE.values()) <= set(PATTERNS)
    assert set(FACTORS) <= set(FIELDS)
    spec = SceneSpec()
    for name, values in FACTORS.items():  # every listed value is a valid intervention
        for v in values:
            assert getattr(spec.replace(**{name: v}), name) == (tuple(v) if isinstance(v, list) else v)


def test_spec_validation_messages() -> None:
    with pytest.raises(ValueError, match="allowed: .*'sphere'"):
        SceneSpec(shape="banana")
    with pytest.raises(ValueError, match="unknown SceneSpec field.*fields are"):
        SceneSpec().replace(colour="red")
    with pytest.raises(ValueError, match=r"size=9.0.*\[0.3, 2.0\]"):
        SceneSpec().replace(size=9.0)
    with pytest.raises(TypeError, match="sequence of 3 numbers"):
        SceneSpec(camera=(1.0, 2.0))
    with pytest.raises(ValueError, match="style"):
        SceneSpec(style="oil")


def test_spec_roundtrip_and_id() -> None:
    spec = sample_specs("train", 40, seed=3)
    for s in spec:
        d = json.loads(json.dumps(s.to_dict()))
        assert SceneSpec.from_dict(d) == s
        assert SceneSpec.from_dict(d).id == s.id
    assert len({s.id for s in spec}) == len(spec)
    # the id is the same in a fresh interpreter (no hash randomisation, no process state)
    code = ("from clip_robustness.fixtures.world import sample_specs; import json; "
            "print(json.dumps([s.id for s in sample_specs('train', 3, seed=3)]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert json.loads(out.stdout) == [s.id for s in spec[:3]]


def test_captions() -> None:
    spec = SceneSpec(shape="cube", color="red", pattern="stripes", size=1.2, background="checkered")
    assert spec.caption() == "a large red striped cube on a checkered floor"
    assert spec.replace(style="sketch", size=1.0, color="orange").caption() == \
        "a pencil sketch of an orange striped cube on a checkered floor"
    rng = np.random.default_rng(0)
    for s in sample_specs("train", 60, seed=1):
        for _ in range(5):
            text = captions(s, rng)
            assert s.shape in text
            named = [c for c in COLORS if f" {c} " in f" {text} "]
            assert named in ([], [s.color]) or (s.extras and set(named) <= {s.color, *(e.color for e in s.extras)})
    assert captions(SceneSpec(shape=None, background="noise", pattern="plain"), rng)


# ----------------------------------------------------------------------------- determinism


def test_render_deterministic_and_seed_only_noise() -> None:
    spec = sample_specs("test", 1, seed=5)[0].replace(style="shaded")
    a, b, c = render(spec, seed=1), render(spec, seed=1), render(spec, seed=2)
    for name in ("rgb", "depth", "mask", "points", "normals"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for name in ("depth", "mask", "points", "normals"):  # seed never touches geometry
        np.testing.assert_array_equal(getattr(a, name), getattr(c, name))
    diff = np.abs(a.rgb.astype(int) - c.rgb.astype(int))
    assert diff.any() and diff.mean() < 6 and diff.max() < 40
    assert a.rgb.dtype == np.uint8 and a.rgb.shape == (64, 64, 3)
    assert a.depth.dtype == np.float32 and a.mask.shape == (64, 64) and a.points.shape == (64, 64, 3)


def test_render_equals_batch_item_regardless_of_batch() -> None:
    specs = [s for split in ("test", "shift-style", "far-ood", "heldout") for s in sample_specs(split, 3, seed=2)]
    rgb, depth = render_batch(specs, seed=4)
    rgb_rev, depth_rev = render_batch(specs[::-1], seed=4)
    np.testing.assert_array_equal(rgb, rgb_rev[::-1])
    np.testing.assert_array_equal(depth, depth_rev[::-1])
    for i in (0, 4, 7, 10):
        r = render(specs[i], seed=4)
        np.testing.assert_array_equal(rgb[i], r.rgb)
        np.testing.assert_array_equal(depth[i], r.depth)
    one = render_batch([specs[3]], seed=4)
    np.testing.assert_array_equal(one[0][0], rgb[3])
    per_item, _ = render_batch(specs[:2], seed=[4, 9])
    np.testing.assert_array_equal(per_item[1], render(specs[1], seed=9).rgb)
    many = specs * 6  # split across two threads: same pixels as one thread
    for x, y in zip(render_batch(many, size=16, threads=2), render_batch(many, size=16, threads=1)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(TypeError, match="sequence of SceneSpec"):
        render_batch(specs[0])
    with pytest.raises(ValueError, match="size"):
        render_batch(specs, size=3)


# ----------------------------------------------------------------------------- interventions


@FAST
@given(spec=specs_st, factor=st.sampled_from(sorted(FACTORS)), data=st.data())
def test_intervention_changes_only_its_factor(spec: SceneSpec, factor: str, data: st.DataObject) -> None:
    value = data.draw(st.sampled_from(FACTORS[factor]))
    new = spec.replace(**{factor: value})
    before, after = spec.to_dict(), new.to_dict()
    assert {k for k in FIELDS if before[k] != after[k]} <= {factor}
    assert SceneSpec.from_dict(after) == new
    if before[factor] == after[factor]:
        assert new == spec and new.id == spec.id
        return
    assert new.id != spec.id
    # Visible factors change the image. Make every factor visible: shaded style (light direction),
    # a floor (camera moves), a non-symmetric pattern (pose), no occluder unless it is the factor.
    base = spec.replace(style="shaded", background="checkered", pattern="checker", shape="cube",
                        occluder="post" if factor == "occluder_offset" else None)
    if factor in ("style", "background", "pattern", "shape", "occluder"):
        base = base.replace(**{factor: getattr(spec, factor)})
    changed = base.replace(**{factor: value})
    if changed == base:
        return
    a, b = render_batch([base, changed], size=32)[0]
    assert (a != b).any(), f"intervention {factor}={value!r} left the image unchanged"


# ----------------------------------------------------------------------------- geometry


def test_depth_of_sphere_matches_analytic_intersection() -> None:
    dist, size_ = 5.0, 1.1
    r_world = 0.8 * size_  # the sphere class has radius 0.8 in object space
    spec = SceneSpec(shape="sphere", size=size_, camera=(20.0, 10.0, dist), background="plain", pattern="plain")
    r = render(spec, size=64)
    centre = r.depth[31:33, 31:33]  # the optical axis passes between these four pixels
    np.testing.assert_allclose(centre, dist - r_world, atol=0.01)
    # exact ray-sphere intersection for every pixel
    pos, right, up, fwd = (a[0] for a in camera_frames(np.array(spec.camera)))
    xy = np.stack(np.meshgrid(np.arange(64), np.arange(64)), -1).reshape(-1, 2).astype(float)
    f = (64 / 2) / np.tan(np.radians(20))
    d = fwd + ((xy[:, :1] + 0.5 - 32) / f) * right - ((xy[:, 1:] + 0.5 - 32) / f) * up
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    b = d @ pos
    disc = b * b - (pos @ pos - r_world ** 2)
    hit = disc > 0
    t = -b - np.sqrt(np.where(hit, disc, 0))
    z = np.where(hit, t * (d @ fwd), np.inf).reshape(64, 64)
    disc = disc.reshape(64, 64)
    inner = disc > 0.05  # away from the grazing silhouette
    assert (r.mask[inner] == 1).all() and (r.mask[disc < -0.05] == 0).all()
    np.testing.assert_allclose(r.depth[inner], z[inner], atol=0.01)
    assert np.isinf(r.depth[r.mask == 0]).all()  # plain backdrop: depth inf, points nan
    assert np.isnan(r.points[r.mask == 0]).all()
    row = r.depth[32, 32:][np.isfinite(r.depth[32, 32:])]
    assert len(row) > 8 and (np.diff(row) > 0).all()  # depth grows away from the centre


@FAST
@given(spec=specs_st)
def test_depth_and_points_agree_with_scene_geometry(spec: SceneSpec) -> None:
    r = render(spec, size=48)
    pos, _, _, fwd = (a[0] for a in camera_frames(np.array(spec.camera)))
    finite = np.isfinite(r.depth)
    assert (np.isfinite(r.points).all(-1) == finite).all()
    pts = r.points[finite].astype(np.float64)
    np.testing.assert_allclose((pts - pos) @ fwd, r.depth[finite], rtol=1e-4, atol=1e-3)
    # every pixel's 3D point projects back onto that pixel
    ys, xs = np.nonzero(finite)
    xy, z = project(pts, spec.camera, 48)
    np.testing.assert_allclose(xy, np.stack([xs, ys], 1), atol=2e-2)
    # object pixels lie on the surface of their object (within half a pixel footprint)
    footprint = r.depth * 2 * np.tan(np.radians(20)) / 48
    for slot, shape, rot, t, scale, _, _ in object_placements(spec):
        on = r.mask == slot
        if on.any():
            local = (r.points[on].astype(np.float64) - t) @ rot / scale
            assert (np.abs(sdf(shape, local) * scale) < 0.5 * footprint[on]).all(), shape
    # floor pixels lie on the floor plane
    floor = finite & (r.mask == 0) & (r.points[..., 1] < FLOOR_Y + 1e-3)
    if floor.any():
        np.testing.assert_allclose(r.points[floor][:, 1], FLOOR_Y, atol=1e-3)


# ----------------------------------------------------------------------------- multi-view


def _min_sdf_on_segments(spec: SceneSpec, start: np.ndarray, ends: np.ndarray, n: int = 400) -> np.ndarray:
    """Smallest world-space SDF over all objects along each segment start -> end (excluding the end)."""
    f = np.linspace(0, 1, n, endpoint=False)[None, :, None]             # (1, n, 1)
    pts = start + f * (ends[:, None, :] - start) * (1 - 0.03 / np.linalg.norm(ends - start, axis=1))[:, None, None]
    best = np.full(pts.shape[:2], np.inf)
    for _, shape, rot, t, scale, _, _ in object_placements(spec):
        best = np.minimum(best, sdf(shape, (pts - t) @ rot / scale) * scale)
    return best.min(1)


def test_multiview_correspondences() -> None:
    spec = SceneSpec(shape="torus", size=1.2, pattern="checker", background="checkered", pose=(0.0, 60.0, 0.0),
                     camera=(20.0, 25.0, 4.3), occluder="post", occluder_offset=-0.3)
    a, b = render_views(spec, [(20.0, 25.0, 4.3), (140.0, 30.0, 4.8)], size=64)
    assert a.camera == spec.camera and b.camera == (140.0, 30.0, 4.8)
    np.testing.assert_array_equal(a.rgb, render(spec).rgb)  # the reference view is the ordinary render
    pa, pb = correspondences(a, b, max_points=None)
    assert len(pa) > 100
    # independent visibility: march the segment from b's camera to each point of a through the SDFs
    ys, xs = np.nonzero(a.mask == 1)
    p3 = a.points[ys, xs].astype(np.float64)
    xy, z = project(p3, b.camera, 64)
    in_frame = ((np.round(xy) >= 0) & (np.round(xy) < 64)).all(1)
    clearance = _min_sdf_on_segments(spec, camera_frames(np.array(b.camera))[0][0], p3)
    matched = np.zeros(len(xs), bool)
    index = {(x, y): i for i, (x, y) in enumerate(zip(xs, ys))}
    matched[[index[(int(x), int(y))] for x, y in pa]] = True
    hidden = in_frame & (clearance < -0.05)        # clearly behind some surface in view b
    assert hidden.sum() > 30                       # self-occlusion and the post: the test is not vacuous
    assert not (matched & hidden).any()            # occluded points are excluded
    assert (clearance[matched] > -0.02).mean() > 0.97  # matched points are visible (edge pixels aside)
    # the 3D points at matched pixels agree within the patch a pixel covers (stretched by obliquity)
    ib = np.round(pb).astype(int)
    p3a = a.points[pa[:, 1].astype(int), pa[:, 0].astype(int)]
    p3b = b.points[ib[:, 1], ib[:, 0]]
    nb = b.normals[ib[:, 1], ib[:, 0]]
    cam_b = camera_frames(np.array(b.camera))[0][0]
    ray = (p3b - cam_b) / np.linalg.norm(p3b - cam_b, axis=1, keepdims=True)
    footprint = b.depth[ib[:, 1], ib[:, 0]] * 2 * np.tan(np.radians(20)) / 64
    err = np.linalg.norm(p3a - p3b, axis=1)
    # (rounding to b's pixel grid moves <= 0.71 px, i.e. <= 0.71 footprint / cos(incidence) on the surface)
    # (a few silhouette pixels round onto a neighbouring part of the surface)
    assert np.mean(err <= footprint / np.maximum(np.abs((ray * nb).sum(1)), 0.1) + 1e-3) > 0.95
    assert err.max() < 0.25  # never a point of another surface
    sub_a, sub_b = correspondences(a, b, max_points=50, rng=np.random.default_rng(1))
    assert len(sub_a) == 50 and set(map(tuple, sub_a)) <= set(map(tuple, pa))
    with pytest.raises(ValueError, match="same world"):
        correspondences(a, render(spec.replace(color="blue")))


# ----------------------------------------------------------------------------- splits


def test_sample_specs_deterministic_and_split_distinct() -> None:
    assert sample_specs("train", 30, seed=7) == sample_specs("train", 30, seed=7)
    assert sample_specs("train", 10, seed=7) == sample_specs("train", 30, seed=7)[:10]
    assert sample_specs("train", 30, seed=7) != sample_specs("train", 30, seed=8)
    ids = {split: [s.id for s in sample_specs(split, 30, seed=0)] for split in SPLITS}
    for s1 in SPLITS:
        for s2 in SPLITS:
            if s1 < s2:
                assert not set(ids[s1]) & set(ids[s2]), (s1, s2)
    with pytest.raises(ValueError, match="unknown split 'nope'; splits are: train"):
        sample_specs("nope", 1, 0)


def test_split_contents() -> None:
    train = [s for split in ("train", "train-narrow", "val", "test") for s in sample_specs(split, 1500, seed=0)]
    used = {s.shape for s in train} | {e.shape for s in train for e in s.extras}
    assert used == set(ID_CLASSES)  # every ID class, never a held-out one
    tr = sample_specs("train", 1500, seed=0)
    frac = np.mean([s.pattern == CLASS_TEXTURE[s.shape] for s in tr])
    assert 0.75 < frac < 0.85
    assert {s.style for s in tr} == {"shaded", "flat"}
    assert any(s.occluder for s in tr) and any(s.extras for s in tr) and any(s.flat()["partial_view"] for s in tr)
    for s in sample_specs("cue-conflict", 300, seed=0):
        assert s.texture_class is not None and s.texture_class != s.shape
        assert s.pattern == CLASS_TEXTURE[s.texture_class] != CLASS_TEXTURE[s.shape]
    assert {s.shape for s in sample_specs("heldout", 200, seed=0)} == set(HELDOUT_CLASSES)
    assert all(s.label is None for s in sample_specs("far-ood", 50, seed=0))
    assert {s.style for s in sample_specs("shift-style", 50, seed=0)}.isdisjoint({"shaded", "flat"})
    assert {s.background for s in sample_specs("shift-background", 50, seed=0)}.isdisjoint(
        {s.background for s in tr})
    light = sample_specs("shift-lighting", 200, seed=0)
    assert all(s.light[2] < 0.5 or s.light[2] > 1.6 or s.light_color not in ("white", "warm", "cool")
               or abs(s.light[0]) >= 140 for s in light)
    pose = sample_specs("shift-pose", 200, seed=0)
    assert all(max(abs(s.pose[1]), abs(s.pose[2])) > 50 or not 15 <= s.camera[1] <= 45 for s in pose)
    narrow = sample_specs("train-narrow", 300, seed=0)
    assert {s.style for s in narrow} == {"shaded"}
    assert all(s.pose[1:] == (0.0, 0.0) and not s.occluder and not s.extras and not s.flat()["partial_view"]
               for s in narrow)
    assert {s.background for s in narrow} == set(TRAIN_BACKGROUNDS)  # narrow, but not missing a whole factor


def test_every_split_renders() -> None:
    specs = [s for split in SPLITS for s in sample_specs(split, 2, seed=1)]
    rgb, depth = render_batch(specs, size=32)
    assert rgb.shape == (len(specs), 32, 32, 3) and depth.shape == (len(specs), 32, 32)
    assert (rgb.reshape(len(specs), -1).std(1) > 3).all()  # no blank images
    # the main object fills a reasonable part of the frame in the test distribution
    masks = np.stack([render(s).mask for s in sample_specs("test", 16, seed=2)])
    cover = (masks == 1).mean((1, 2))
    assert 0.08 < np.median(cover) < 0.5


# ----------------------------------------------------------------------------- export


def test_export_reloads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["export", "--split", "test", "--n", "5", "--seed", "3", "--out", str(tmp_path),
                     "--batch", "2"]) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    specs = sample_specs("test", 5, seed=3)
    rgb, depth = render_batch(specs, seed=3)
    assert len(rows) == 5
    for i, row in enumerate(rows):
        spec = SceneSpec.from_dict(row["spec"])
        assert spec == specs[i] and row["id"] == spec.id
        assert row["label"] == spec.shape and row["caption"] == spec.caption() and row["split"] == "test"
        for key in ("file", "depth_file", "seed", "texture_class", "n_objects", "partial_view"):
            assert key in row
        for field_ in FIELDS:  # every factor, flat
            flat_keys = [k for k in row if k == field_ or k.startswith(field_ + "_")]
            assert flat_keys, field_
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / row["file"]).convert("RGB")), rgb[i])
        np.testing.assert_array_equal(np.load(tmp_path / row["depth_file"]), depth[i])


def test_cli_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli_main(["export", "--split", "nope", "--n", "3", "--out", "x"])
    assert e.value.code == 2
    assert "unknown split 'nope'; choose from: train" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["export", "--split", "test", "--n", "-1", "--out", "x"])
    assert "positive integer" in capsys.readouterr().err
