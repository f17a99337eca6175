"""Tests of the real-data adapters of the ``shape_bias`` and ``factor`` properties (cue-conflict
stimuli, ImageNet-X annotations) on tiny folders and files made here, and of the shape-bias cells."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_robustness.fixtures import imagenet_x
from clip_robustness.fixtures.cue_conflict import CLASSES, cue_conflict_dataset, shape_bias_cells, texture_labels
from clip_robustness.fixtures.datasets import DatasetError, world_dataset
from clip_robustness.fixtures.real_data import classification_dataset
from clip_robustness.fixtures.world.spec import CLASS_TEXTURE, TEXTURE_CLASS
from clip_robustness.plugins.metrics import error_ratio, shape_bias_score


def _png(path: Path, value: int = 128, suffix_format: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path, format=suffix_format)


# ----------------------------------------------------------------------------- cue conflict


def test_cue_conflict_folder(tmp_path):
    for rel in ("cat/cat1-elephant2.png", "cat/cat2-cat1.png", "airplane/airplane3-knife1.png",
                "truck/truck10-clock7.png"):
        _png(tmp_path / rel)
    ds = cue_conflict_dataset("cue-conflict", tmp_path)
    assert ds.classnames == CLASSES and len(CLASSES) == 16
    files = [m["file"] for m in ds.meta]
    assert [CLASSES[i] for i in ds.labels] == [f.split("/")[0] for f in files]
    assert [CLASSES[i] for i in texture_labels(ds)] == [m["texture"] for m in ds.meta]
    by_file = dict(zip(files, texture_labels(ds)))
    assert CLASSES[by_file["cat/cat1-elephant2.png"]] == "elephant"
    assert CLASSES[by_file["cat/cat2-cat1.png"]] == "cat"  # kept; the metric drops same-class items
    assert ds.images([0])[0].shape == (8, 8, 3)


@pytest.mark.parametrize("rel, message", [
    ("cat/cat1_elephant2.png", "is not named"),
    ("cat/dog1-elephant2.png", "must be its folder's class"),
    ("cat/cat1-zebra2.png", "among the 16 classes"),
    ("zebra/zebra1-cat2.png", "not cue-conflict classes"),
])
def test_cue_conflict_folder_errors(tmp_path, rel, message):
    _png(tmp_path / "cat/cat9-dog9.png")
    _png(tmp_path / rel)
    with pytest.raises(DatasetError, match=message):
        cue_conflict_dataset("cue-conflict", tmp_path)


def test_world_cue_conflict_texture_labels():
    ds = world_dataset("cue-conflict", n=30)
    texture = texture_labels(ds)
    expected = [ds.classnames.index(TEXTURE_CLASS[m["pattern"]]) for m in ds.meta]
    assert texture.tolist() == expected and np.all(texture != ds.labels)
    assert all(CLASS_TEXTURE[ds.classnames[t]] == m["pattern"] for t, m in zip(texture, ds.meta))


def test_shape_bias_cells_agree_with_the_metric():
    rng = np.random.default_rng(0)
    n, c = 300, 5
    shape = rng.integers(0, c, n)
    texture = rng.integers(0, c, n)  # some equal the shape: dropped
    pred = np.where(rng.random(n) < 0.5, shape, np.where(rng.random(n) < 0.6, texture, rng.integers(0, c, n)))
    names = [f"c{i}" for i in range(c)]
    cells = shape_bias_cells(pred, shape, texture, names)
    assert [cell.cls for cell in cells] == [""] + names
    for cell in cells:
        rows = np.ones(n, bool) if not cell.cls else shape == names.index(cell.cls)
        assert np.array_equal(cell.index, np.flatnonzero(rows & (shape != texture)))
        ref = shape_bias_score(pred[rows], shape[rows], texture[rows])
        assert cell.shape_votes.mean() == pytest.approx(ref["shape_bias"])
        assert cell.by_shape.mean() == pytest.approx(ref["shape_fraction"])
        assert cell.by_texture.mean() == pytest.approx(ref["texture_fraction"])
    # hand-computed: 2 shape, 1 texture, 1 neither decision; the same-class item is dropped
    cell = shape_bias_cells([0, 2, 5, 3, 4], [0, 1, 1, 3, 4], [1, 2, 2, 0, 4], list("abcdef"))[0]
    assert cell.shape_votes.tolist() == [True, False, True]  # shape bias 2/3
    assert (cell.by_shape.mean(), cell.by_texture.mean()) == (0.5, 0.25)


# ----------------------------------------------------------------------------- ImageNet-X

FILES = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 7)]
CLASSES_OF = [0, 0, 1, 1, 1, 0]


def _rows(classes=CLASSES_OF) -> list[dict]:
    rows = []
    for k, (name, cls) in enumerate(zip(FILES, classes)):
        row = {"file_name": name, "class": cls, **dict.fromkeys(imagenet_x.FACTORS, 0), "justification": "x"}
        row[imagenet_x.FACTORS[k % 3]] = 1  # pose, background, pattern, pose, ...
        rows.append(row)
    return rows


def _jsonl(path: Path, rows: list[dict]) -> Path:
    """The annotation file and, as in the package's folder, the prototypes list beside it (empty unless given)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prototypes = path.parent / "prototypical_paths.csv"
    if not prototypes.exists():
        prototypes.write_text("file_name\n")
    return path


def test_annotations_from_jsonl_csv_and_folder(tmp_path):
    rows = _rows()
    from_jsonl = imagenet_x.load_annotations(_jsonl(tmp_path / "ann.jsonl", rows))
    with (tmp_path / "ann.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    from_csv = imagenet_x.load_annotations(tmp_path / "ann.csv")
    for ann in (from_jsonl, from_csv):
        assert ann.file_names == tuple(FILES) and ann.classes.tolist() == CLASSES_OF
        assert ann.factors.shape == (6, 16) and ann.factors.sum(0)[:3].tolist() == [2, 2, 2]
    folder = tmp_path / "x"
    folder.mkdir()
    _jsonl(folder / "imagenet_x_val_top_factor.jsonl", rows)
    (folder / "prototypical_paths.csv").write_text("file_name\n" + FILES[0] + "\n")
    filtered = imagenet_x.load_annotations(folder)
    assert filtered.file_names == tuple(FILES[1:]) and filtered.prototypes_removed == 1
    assert len(imagenet_x.load_annotations(folder, filter_prototypes=False)) == 6


def test_the_file_and_its_folder_give_the_same_rows(tmp_path):
    """`--data imagenet-x=` the annotation file or its folder: both leave out the prototypes listed beside the
    file, as the toolkit's load_annotations(filter_prototypes=True) does; without that list, one sentence."""
    folder = tmp_path / "x"
    folder.mkdir()
    file = _jsonl(folder / "imagenet_x_val_top_factor.jsonl", _rows())
    (folder / "prototypical_paths.csv").write_text("file_name\n" + FILES[0] + "\n" + FILES[3] + "\n")
    by_folder, by_file = imagenet_x.load_annotations(folder), imagenet_x.load_annotations(file)
    assert by_file.file_names == by_folder.file_names == (FILES[1], FILES[2], FILES[4], FILES[5])
    assert by_file.prototypes_removed == by_folder.prototypes_removed == 2
    (folder / "prototypical_paths.csv").unlink()
    for path in (folder, file):
        with pytest.raises(DatasetError, match=r"no prototypical_paths.csv beside imagenet_x_val_top_factor.jsonl, "
                                               r"so the prototypical images .* cannot be filtered; copy "):
            imagenet_x.load_annotations(path)
        with pytest.raises(DatasetError, match="cannot be filtered"):
            imagenet_x.check_path(path)  # at start-up, before any model loads
    assert len(imagenet_x.load_annotations(file, filter_prototypes=False)) == 6


def test_the_bundled_file_gives_the_toolkit_rows():
    pytest.importorskip("pandas")
    toolkit = pytest.importorskip("imagenet_x.utils")
    folder = imagenet_x.package_annotations_dir()
    expected = tuple(toolkit.load_annotations()["file_name"])  # filter_prototypes=True, the toolkit's default
    assert imagenet_x.load_annotations(folder / "imagenet_x_val_top_factor.jsonl").file_names == expected
    assert imagenet_x.load_annotations(folder).file_names == expected


@pytest.mark.parametrize("mutate, message", [
    (lambda rows: rows[:2] + [{k: v for k, v in r.items() if k != "pose"} for r in rows[2:]], "row 3 lacks"),
    (lambda rows: [{**r, "pose": ""} for r in rows], "must be 0 or 1"),
    (lambda rows: [{**r, "pose": 2} for r in rows], "must be 0 or 1"),
    (lambda rows: rows + [rows[0]], "more than once"),
])
def test_annotation_errors(tmp_path, mutate, message):
    with pytest.raises(DatasetError, match=message):
        imagenet_x.load_annotations(_jsonl(tmp_path / "ann.jsonl", mutate(_rows())))


def test_annotation_path_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"file_name": "a"}\nnot json\n')
    (tmp_path / "prototypical_paths.csv").write_text("file_name\n")
    with pytest.raises(DatasetError, match="line 2 is not JSON"):
        imagenet_x.load_annotations(tmp_path / "bad.jsonl")
    with pytest.raises(DatasetError, match="has no imagenet_x_val_top_factor.jsonl"):
        imagenet_x.load_annotations(tmp_path)
    (tmp_path / "ann.txt").write_text("x")
    with pytest.raises(DatasetError, match=".jsonl or .csv"):
        imagenet_x.load_annotations(tmp_path / "ann.txt")
    with pytest.raises(ValueError, match="which must be"):
        imagenet_x.load_annotations(tmp_path, which="all")


def _imagenet(root: Path, layout: dict[str, list[str]]):
    for wnid, files in layout.items():
        for name in files:
            _png(root / wnid / name, suffix_format="JPEG")
    return classification_dataset("imagenet", root)


def test_align_imagenet_folder_with_annotations(tmp_path):
    # class 0 = n01440764 (tench), class 1 = n01443537 (goldfish); one unannotated image
    ds = _imagenet(tmp_path / "val", {"n01440764": [FILES[0], FILES[1], FILES[5], "ILSVRC2012_val_00009999.JPEG"],
                                      "n01443537": FILES[2:5]})
    ann = imagenet_x.load_annotations(_jsonl(tmp_path / "ann.jsonl", _rows()))
    idx, factors = imagenet_x.align(ds, ann)
    assert len(idx) == 6 and factors.shape == (6, 16)
    names = [Path(ds.meta[i]["file"]).name for i in idx]
    row = {n: ann.file_names.index(n) for n in names}
    np.testing.assert_array_equal(factors, ann.factors[[row[n] for n in names]])
    np.testing.assert_array_equal(ds.labels[idx], ann.classes[[row[n] for n in names]])
    # an image filed under another class than its annotation
    wrong = imagenet_x.load_annotations(_jsonl(tmp_path / "wrong.jsonl", _rows([1, 0, 1, 1, 1, 0])))
    with pytest.raises(DatasetError, match="annotates it as class"):
        imagenet_x.align(ds, wrong)
    other = _imagenet(tmp_path / "other", {"n01440764": ["ILSVRC2012_val_00009998.JPEG"]})
    with pytest.raises(DatasetError, match="none of the 1 images"):
        imagenet_x.align(other, ann)


def test_factor_accuracies_and_error_ratio_against_the_imagenet_x_toolkit():
    pd = pytest.importorskip("pandas")
    aggregate = pytest.importorskip("imagenet_x.aggregate")
    rng = np.random.default_rng(0)
    k = 500
    factors = rng.random((k, 16)) < np.linspace(0.02, 0.5, 16)  # (K, F)
    factors[:, 3] = False  # a factor no image has: nan
    correct = rng.random(k) < 0.7
    mine = imagenet_x.factor_accuracies(correct, factors)
    df = pd.DataFrame(factors.astype(int), columns=list(imagenet_x.FACTORS))
    df["is_correct"], df["model"] = correct, "m"
    theirs = aggregate.compute_factor_accuracies(df, list(imagenet_x.FACTORS))
    np.testing.assert_allclose(mine, theirs.loc["m", list(imagenet_x.FACTORS)].to_numpy(float), equal_nan=True)
    assert theirs.loc["m", "average"] == pytest.approx(correct.mean())
    present = np.isfinite(mine)
    expected = aggregate.error_ratio(theirs).loc["m"].to_numpy(float)  # (1 - acc_f) / (1 - average)
    np.testing.assert_allclose(error_ratio(mine[present], correct.mean()), expected[present])


def test_bundled_annotations_are_found_when_the_package_is_installed():
    pytest.importorskip("imagenet_x")  # optional: pip install imagenet-x
    folder = imagenet_x.package_annotations_dir()
    assert folder is not None and (folder / "imagenet_x_val_top_factor.jsonl").is_file()
    with (folder / "imagenet_x_val_top_factor.jsonl").open() as handle:
        first = json.loads(handle.readline())
    assert {"file_name", "class", *imagenet_x.FACTORS} <= set(first)
