"""Dataset adapters against tiny folders made here: ImageFolder, ImageNet layouts, OOD folders, splits."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clip_robustness.fixtures.datasets import MIN_V2_INDEX_FOLDERS, DatasetError, image_folder, imagenet_folder, world_dataset
from clip_robustness.fixtures.real_data import (calibration_split, check_data_layout, classes_present, classification_dataset,
                                               ood_dataset, subset_wnids)


def _img(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_image_folder_labels_ids_and_pixels(tmp_path):
    _img(tmp_path / "red_fox" / "a.png", 10)
    _img(tmp_path / "cat" / "b.png", 20)
    _img(tmp_path / "cat" / "c.jpg", 30)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = image_folder("toy", tmp_path)
    assert ds.classnames == ("cat", "red fox")  # sorted folders, '_' -> ' '
    assert ds.labels.tolist() == [0, 0, 1] and len(ds.item_ids) == 3
    assert ds.images([0])[0][0, 0, 0] == 20
    before = ds.item_ids[0]
    _img(tmp_path / "cat" / "b.png", 99)  # new content -> new size/mtime -> new item id (cache key)
    assert image_folder("toy", tmp_path).item_ids[0] != before


def test_imagenet_layouts(tmp_path):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    _img(tmp_path / "val" / "n01440764" / "x.JPEG", 1)  # wnid folders: class 0 (tench)
    for i in range(MIN_V2_INDEX_FOLDERS):  # ImageNet-V2 index folders (a partial copy of half its classes)
        _img(tmp_path / "v2" / str(i) / "y.jpeg", 2)
    assert imagenet_folder("imagenet", tmp_path / "val").labels.tolist() == [0]
    v2 = classification_dataset("imagenet-v2", tmp_path / "v2")
    assert v2.labels.tolist() == [int(m["file"].split("/")[0]) for m in v2.meta]  # folder "10" is class 10
    assert len(v2.classnames) == 1000 and v2.classnames[1] == IMAGENET_CLASSNAMES[1]
    _img(tmp_path / "bad" / "dogs" / "z.png", 3)
    with pytest.raises(DatasetError, match=r"folders \['dogs'\] are not ImageNet wnids .*imagefolder:NAME="):
        imagenet_folder("imagenet", tmp_path / "bad")


def test_numbered_class_folders_are_imagenet_v2_only(tmp_path):
    """Case 6: folders 0..9 (CIFAR-10 style) are not ImageNet classes 0..9: refused, pointing at imagefolder."""
    for i in range(10):
        _img(tmp_path / "cifar" / str(i) / "a.png", i)
    for name in ("imagenet", "imagenet-sketch", "imagenet-r"):
        with pytest.raises(DatasetError, match=rf"{name}=.*numbered.*only imagenet-v2.*imagefolder:NAME="):
            classification_dataset(name, tmp_path / "cifar")
    with pytest.raises(DatasetError, match=r"only 10 of ImageNet-V2's 1000 class-index folders.*imagefolder:NAME="):
        classification_dataset("imagenet-v2", tmp_path / "cifar")
    custom = image_folder("cifar", tmp_path / "cifar")  # what the sentence points to: its own 10 classes
    assert custom.classnames == tuple(str(i) for i in range(10)) and custom.labels.tolist() == list(range(10))


def test_subset_sets_are_scored_over_their_published_200_classes(tmp_path):
    """A partial ImageNet-R copy keeps R's 200-class label space (hendrycks/imagenet-r's imagenet_r_wnids), so
    two classes present are not a 2-way problem; a class folder outside R's 200 is refused at start-up."""
    _img(tmp_path / "r" / "n01443537" / "a.png", 1)  # goldfish: R's first class
    _img(tmp_path / "r" / "n01484850" / "b.png", 2)  # great white shark: R's second
    _img(tmp_path / "r" / "n01833805" / "c.png", 3)  # hummingbird: R's 22nd (ImageNet 94)
    ds = classification_dataset("imagenet-r", tmp_path / "r")
    assert len(ds.classnames) == 200 and ds.labels.tolist() == [0, 1, 21]
    assert ds.classnames[21] == "hummingbird" and classes_present(ds) == {"classes_present": 3, "classes": 200}
    check_data_layout("imagenet-r", tmp_path / "r")
    assert len(classification_dataset("imagenet-a", tmp_path / "r").classnames) == 200
    _img(tmp_path / "r" / "n01440764" / "d.png", 4)  # tench: an ImageNet class, not one of R's
    with pytest.raises(DatasetError, match=r"folders \['n01440764'\] are ImageNet classes outside imagenet-r's 200"):
        check_data_layout("imagenet-r", tmp_path / "r")


def test_missing_and_empty_folders_explain_the_fix(tmp_path):
    with pytest.raises(DatasetError, match="folder does not exist"):
        image_folder("x", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="one sub-folder per class"):
        image_folder("x", tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        image_folder("x", tmp_path / "empty")


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "broken.png").write_bytes(b"not a png")
    ds = image_folder("x", tmp_path)
    with pytest.raises(DatasetError, match="broken.png"):
        ds.images([0])


def test_ood_folders_flat_or_nested(tmp_path):
    _img(tmp_path / "flat" / "a.png", 1)
    _img(tmp_path / "nested" / "k" / "b.png", 2)
    for sub in ("flat", "nested"):
        ds = ood_dataset(f"ood:{sub}", tmp_path / sub)
        assert (ds.labels == -1).all() and len(ds) == 1


def test_ood_folders_read_every_image_at_any_depth(tmp_path):
    """MCM's iNaturalist/images/, Places' class folders, loose files beside sub-folders: all read; hidden and
    archive folders are not (a .ipynb_checkpoints folder does not turn a flat folder into class folders)."""
    root = tmp_path / "Places"
    for rel in ("b_0.jpg", "b_1.JPG", "thumbs/t.jpg", "thumbs/deep/u.png", "z/v.jpeg"):
        _img(root / rel, 1)
    for rel in (".ipynb_checkpoints/x.jpg", "__MACOSX/thumbs/._t.jpg", "thumbs/._t.jpg"):
        _img(root / rel, 2)
    (root / "README.txt").write_text("not an image")
    ds = ood_dataset("ood:places", root)
    assert [m["file"] for m in ds.meta] == ["b_0.jpg", "b_1.JPG", "thumbs/t.jpg", "thumbs/deep/u.png", "z/v.jpeg"]
    assert (ds.labels == -1).all()
    assert [m["file"] for m in ds.spread_head(3).meta] == ["b_0.jpg", "thumbs/t.jpg", "thumbs/deep/u.png"]  # one per folder


def test_image_files_in_any_case_and_nested_in_class_folders_are_read(tmp_path):
    """torchvision's ImageFolder: extensions in any case (IMG_EXTENSIONS), images at any depth of a class folder."""
    for k, name in enumerate(("a.Jpg", "b.JPG", "c.jpeg", "d.Jpeg", "e.tif", "f.BMP", "g.WEBP", "sub/h.JPEG")):
        _img(tmp_path / "n01440764" / name, k)
    (tmp_path / "n01440764" / "README").write_text("x")
    (tmp_path / "n01440764" / "notes.txt").write_text("x")
    ds = imagenet_folder("imagenet", tmp_path)
    assert len(ds) == 8 and ds.labels.tolist() == [0] * 8
    assert [int(im[0, 0, 0]) for im in ds.images(range(8))] == list(range(8))


def test_symlinked_folders_are_read_and_a_broken_link_is_one_sentence(tmp_path):
    _img(tmp_path / "elsewhere" / "n01484850" / "a.JPEG", 1)
    _img(tmp_path / "val" / "n01440764" / "b.JPEG", 2)
    (tmp_path / "val" / "n01484850").symlink_to(tmp_path / "elsewhere" / "n01484850")  # a symlink farm
    (tmp_path / "val" / "n01440764" / "loop").symlink_to(tmp_path / "val" / "n01440764")  # a loop: read once
    ds = imagenet_folder("imagenet", tmp_path / "val")
    assert ds.labels.tolist() == [0, 2] and [m["file"] for m in ds.meta] == ["n01440764/b.JPEG", "n01484850/a.JPEG"]
    (tmp_path / "val" / "n01440764" / "gone.JPEG").symlink_to(tmp_path / "nothing.JPEG")
    with pytest.raises(DatasetError, match=r"--data imagenet: .*gone.JPEG is a broken link \(its target .*nothing.JPEG "
                                           r"does not exist\); restore the target or remove the link"):
        imagenet_folder("imagenet", tmp_path / "val")


def test_a_file_name_that_is_not_utf8_is_read_and_shown_escaped(tmp_path):
    """Zips made on Windows hold Latin-1 names: Python gives them surrogate escapes, which UTF-8 refuses."""
    import os

    folder = tmp_path / "n01440764"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.JPEG")
    try:
        with open(raw, "wb") as handle:
            Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(handle, format="JPEG")
    except OSError as err:
        pytest.skip(f"this file system refuses non-UTF-8 names ({err})")
    ds = imagenet_folder("imagenet", tmp_path)
    assert ds.meta[0]["file"] == "n01440764/caf\\xe9.JPEG" and ds.item_ids[0].startswith("n01440764/caf\\xe9.JPEG:")
    json.dumps({"ids": list(ds.item_ids), "meta": ds.meta}, ensure_ascii=False).encode()  # reports and cache keys
    assert ds.images([0])[0].shape == (8, 8, 3)
    (folder / os.fsdecode(b"caf\xe9.JPEG")).write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"could not read image .*caf\\xe9.JPEG") as err:
        ds.images([0])
    str(err.value).encode()  # the sentence prints


def test_start_up_refuses_a_one_class_set_and_imagenet_x_without_its_prototypes_list(tmp_path):
    _img(tmp_path / "one" / "cube" / "a.png", 1)
    with pytest.raises(DatasetError, match=r"--data imagefolder:one=.*: 1 class folder\(s\); a zero-shot classifier "
                                           r"over fewer than 2 classes is right by construction"):
        check_data_layout("imagefolder:one", tmp_path / "one")  # top-1 was 1.0, and the gate passed
    _img(tmp_path / "one" / "prism" / "b.png", 2)
    check_data_layout("imagefolder:one", tmp_path / "one")
    annotations = tmp_path / "x" / "imagenet_x_val_top_factor.jsonl"
    annotations.parent.mkdir()
    annotations.write_text("")
    with pytest.raises(DatasetError, match="no prototypical_paths.csv beside imagenet_x_val_top_factor.jsonl"):
        check_data_layout("imagenet-x", annotations)


def test_a_file_where_a_folder_belongs_is_named_as_such(tmp_path):
    (tmp_path / "afile.txt").write_text("x")
    for load in (lambda p: imagenet_folder("imagenet", p), lambda p: ood_dataset("ood:x", p),
                 lambda p: check_data_layout("imagenet", p)):
        with pytest.raises(DatasetError, match=r"afile.txt: is a file, not a folder; pass the folder that holds"):
            load(tmp_path / "afile.txt")
    with pytest.raises(DatasetError, match=r"nope: folder does not exist"):
        imagenet_folder("imagenet", tmp_path / "nope")


def test_archive_folders_are_not_classes(tmp_path):
    _img(tmp_path / "sketch" / "n01440764" / "a.JPEG", 1)
    _img(tmp_path / "sketch" / "__MACOSX" / "n01440764" / "._a.JPEG", 1)
    check_data_layout("imagenet-sketch", tmp_path / "sketch")
    assert len(classification_dataset("imagenet-sketch", tmp_path / "sketch")) == 1


def test_calibration_split_is_disjoint_and_stable(tmp_path):
    for i in range(40):
        _img(tmp_path / "n01440764" / f"{i:03d}.png", i)
    ds = imagenet_folder("imagenet", tmp_path)
    cal, test = calibration_split(ds)
    assert set(cal.item_ids).isdisjoint(test.item_ids) and len(cal) + len(test) == 40
    assert 5 < len(cal) < 35
    cal2, _ = calibration_split(ds.head(20))  # --limit keeps the assignment of the items it keeps
    assert set(cal2.item_ids) <= set(cal.item_ids)


def test_world_dataset_is_deterministic_and_limited():
    a, b = world_dataset("test", n=6, seed=0), world_dataset("test", n=6, seed=0)
    assert a.item_ids == b.item_ids and np.array_equal(np.stack(a.images()), np.stack(b.images()))
    assert world_dataset("test", n=6, seed=1).item_ids != a.item_ids
    assert (world_dataset("heldout", n=4).labels == -1).all()
    head = a.head(3)
    assert head.item_ids == a.item_ids[:3] and np.array_equal(np.stack(head.images()), np.stack(a.images()[:3]))


def test_spread_head_takes_classes_round_robin():
    from clip_robustness.fixtures.datasets import ImageDataset

    labels = np.array([0, 0, 0, 0, 1, 1, 2])  # a class-sorted folder
    ds = ImageDataset("d", ("a", "b", "c"), labels, tuple(f"i{k}" for k in range(7)),
                      loader=lambda idx: [np.full((2, 2, 3), k, np.uint8) for k in idx])
    head = ds.spread_head(5)
    assert head.item_ids == ("i0", "i1", "i4", "i5", "i6")  # one of each class, then the second of each
    np.testing.assert_array_equal(head.labels, [0, 0, 1, 1, 2])
    assert [int(im[0, 0, 0]) for im in head.images()] == [0, 1, 4, 5, 6]
    assert ds.spread_head(None) is ds and ds.spread_head(7) is ds


# ----------------------------------------------------------------------------- real data read right (issue 13)

# open_clip's ImageNet class names repeat: "missile" is class 657 and 744, "sunglasses" 836 and 837
SAME_NAME_WNIDS = {"n03773504": 657, "n04008634": 744, "n04355933": 836, "n04356056": 837}


def _rb(data, limit=None, **options):
    from types import SimpleNamespace

    return SimpleNamespace(data=data, data_options=options, limit=limit, templates=("single",))


def test_classes_with_the_same_name_are_labelled_by_wnid(tmp_path, monkeypatch):
    """Case 5: every image is labelled with its own folder's class index, never via its (repeated) name."""
    import clip_robustness.fixtures.datasets
    from clip_robustness.fixtures import imagenet_x
    from clip_robustness.fixtures.corruption_cells import corruption_folder_cells

    for wnid, index in SAME_NAME_WNIDS.items():
        for k in range(2):
            _img(tmp_path / "val" / wnid / f"ILSVRC2012_val_{index:05d}{k}.JPEG", k)
            _img(tmp_path / "c" / "fog" / "3" / wnid / f"{k}.JPEG", k)
            _img(tmp_path / "v2" / str(index) / f"{k}.jpeg", k)
    want = [index for index in SAME_NAME_WNIDS.values() for _ in range(2)]
    val = classification_dataset("imagenet", tmp_path / "val")
    assert val.labels.tolist() == want and val.classnames[657] == val.classnames[744] == "missile"
    monkeypatch.setattr(clip_robustness.fixtures.datasets, "MIN_V2_INDEX_FOLDERS", 4)  # a 4-folder V2 copy, for this test
    assert classification_dataset("imagenet-v2", tmp_path / "v2").labels.tolist() == want
    (cell,) = corruption_folder_cells("imagenet-c", tmp_path / "c", ("fog",), None)
    assert cell.dataset.labels.tolist() == want
    # a label space cut to some classes (-R/-A, calibration halves restricted to them): by wnid
    sub = val.restricted_to(tuple(SAME_NAME_WNIDS))
    assert sub.classnames == ("missile", "missile", "sunglasses", "sunglasses")
    assert sub.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    (missile,) = [w for w in SAME_NAME_WNIDS if w in subset_wnids("imagenet-r")]  # R holds one of the two missiles
    r = classification_dataset("imagenet-r", tmp_path / "val")
    assert r.labels.tolist() == [subset_wnids("imagenet-r").index(missile)] * 2 and missile == "n03773504"
    # ImageNet-X checks each image's folder class against its annotated class: they agree
    rows = [{"file_name": m["file"].split("/")[1], "class": int(label), **dict.fromkeys(imagenet_x.FACTORS, 0)}
            for m, label in zip(val.meta, val.labels)]
    for row in rows:
        row["pose"] = 1
    (tmp_path / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "prototypical_paths.csv").write_text("file_name\n")  # read beside the annotations, as the toolkit does
    idx, _ = imagenet_x.align(val, imagenet_x.load_annotations(tmp_path / "ann.jsonl"))
    assert len(idx) == 8


def test_published_layout_quirks(tmp_path):
    """CMYK and grayscale JPEGs, PNG bytes named .JPEG, README/LICENSE/.DS_Store in class folders, hidden
    folders, a partial copy (2 of 1000 classes): read right, the stray files ignored."""
    root = tmp_path / "val"
    (root / "n01440764").mkdir(parents=True)
    (root / "n01443537").mkdir()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(root / "n01440764" / "cmyk.JPEG")
    Image.new("L", (8, 8), 128).save(root / "n01440764" / "gray.JPEG")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "n01443537" / "png.JPEG", format="PNG")
    for stray in ("README", "LICENSE.txt", ".DS_Store", "._png.JPEG"):
        (root / "n01443537" / stray).write_bytes(b"\x00\x05not an image")
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".DS_Store").write_bytes(b"\x00")
    (root / "README.md").write_text("ImageNet val")
    ds = classification_dataset("imagenet", root)
    assert ds.labels.tolist() == [0, 0, 1] and len(ds.classnames) == 1000
    images = ds.images([0, 1, 2])
    assert all(im.shape == (8, 8, 3) and im.dtype == np.uint8 for im in images)
    assert images[0][0, 0].tolist() == [255, 0, 0] and images[1][0, 0].tolist() == [128] * 3
    assert images[2][0, 0].tolist() == [1, 2, 3]


def test_limit_spreads_over_classes_in_every_real_set(tmp_path):
    """Case 13: --limit on class-sorted folders covers the classes (round-robin), deterministically."""
    from clip_robustness.fixtures.corruption_cells import corruption_folder_cells
    from clip_robustness.fixtures.cue_conflict import cue_conflict_dataset
    from clip_robustness.fixtures.real_data import load_real_set

    wnids = ("n01440764", "n01443537", "n01484850")
    for c, wnid in enumerate(wnids):
        for k in range(4):
            _img(tmp_path / "val" / wnid / f"{k}.JPEG", 10 * c + k)
            _img(tmp_path / "c" / "fog" / "1" / wnid / f"{k}.JPEG", k)
    for shape, texture in (("cat", "dog"), ("dog", "cat")):
        for k in range(3):
            _img(tmp_path / "cue" / shape / f"{shape}{k}-{texture}{k}.png", k)
    loaded = load_real_set("imagenet", _rb({"imagenet": tmp_path / "val"}, limit=3))
    assert loaded.labels.tolist() == [0, 1, 2]
    assert load_real_set("imagenet", _rb({"imagenet": tmp_path / "val"}, limit=3)).item_ids == loaded.item_ids
    folder = load_real_set("imagefolder:x", _rb({"imagefolder:x": tmp_path / "val"}, limit=3))
    assert folder.labels.tolist() == [0, 1, 2]
    ood = ood_dataset("ood:x", tmp_path / "val").spread_head(3)  # labels -1, spread by class folder
    assert sorted(m["file"].split("/")[0] for m in ood.meta) == list(wnids)
    (cell,) = corruption_folder_cells("imagenet-c", tmp_path / "c", ("fog",), 3)
    assert len(np.unique(cell.dataset.labels)) == 3
    assert cue_conflict_dataset("cue-conflict", tmp_path / "cue").spread_head(2).labels.tolist() == [7, 10]


def test_a_replaced_file_gets_a_new_item_id(tmp_path, monkeypatch):
    """Case 9: same size, modification time restored: the content digest still changes the item id
    (the embedding cache key). Digests are read only for the items a --limit run uses."""
    import os

    import clip_robustness.fixtures.datasets

    path = tmp_path / "cls" / "a.bmp"  # BMP: same dimensions, same size on disk
    path.parent.mkdir()
    Image.fromarray(np.full((8, 8, 3), 10, np.uint8)).save(path)
    before, stat = image_folder("x", tmp_path).item_ids[0], path.stat()
    Image.fromarray(np.full((8, 8, 3), 11, np.uint8)).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    after = image_folder("x", tmp_path).item_ids[0]
    assert after != before and after.startswith("cls/a.bmp:")

    for k in range(20):
        _img(tmp_path / "many" / f"c{k % 4}" / f"{k:02d}.png", k)
    read = []
    monkeypatch.setattr(clip_robustness.fixtures.datasets, "file_digest", lambda p: read.append(p) or "d")
    ds = image_folder("many", tmp_path / "many")
    assert len(ds.spread_head(3).item_ids) == 3 and len(read) == 3
    assert len(ds.head(5)) == 5 and len(read) == 3  # a lazy slice reads nothing until used


def test_multi_factor_annotations_are_labelled_multi(tmp_path):
    """Case 14: the multi-factor file, given by path, is labelled multi-factor (by content or name)."""
    from clip_robustness.fixtures import imagenet_x

    def write(path, factors_per_row):
        rows = []
        for i, k in enumerate(factors_per_row):
            row = {"file_name": f"ILSVRC2012_val_{i:08d}.JPEG", "class": 0, **dict.fromkeys(imagenet_x.FACTORS, 0)}
            row.update(dict.fromkeys(imagenet_x.FACTORS[:k], 1))
            rows.append(row)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    (tmp_path / "prototypical_paths.csv").write_text("file_name\n")  # read beside the annotations, as the toolkit does
    assert imagenet_x.load_annotations(write(tmp_path / "ann.jsonl", [1, 2, 3])).which == "multi"
    assert imagenet_x.load_annotations(write(tmp_path / "imagenet_x_val_multi_factor.jsonl", [1, 1])).which == "multi"
    assert imagenet_x.load_annotations(write(tmp_path / "top.jsonl", [1, 1, 0])).which == "top"


def test_imagefolder_set_names_templates_and_sentences(tmp_path):
    """A custom domain: class names from the folders or a file (sorted-folder order), a templates file."""
    from clip_robustness.fixtures.real_data import check_data_name, imagefolder_dataset, imagefolder_options, real_templates

    _img(tmp_path / "d" / "golden_retriever" / "a.png", 1)
    _img(tmp_path / "d" / "tabby" / "b.png", 2)
    names, templates = tmp_path / "names.txt", tmp_path / "t.txt"
    names.write_text("golden retriever dog\ntabby cat\n")
    templates.write_text("a photo of a {c}.\nan X-ray of a {c}.\n")
    spec = f"{tmp_path / 'd'};classnames={names};templates={templates}"
    root, options = imagefolder_options("imagefolder:pets", spec)
    assert root == tmp_path / "d" and options == {"classnames": names, "templates": templates}
    ds = imagefolder_dataset("imagefolder:pets", root, options)
    assert ds.name == "pets" and ds.classnames == ("golden retriever dog", "tabby cat")
    assert ds.labels.tolist() == [0, 1]
    assert imagefolder_dataset("imagefolder:pets", root, {}).classnames == ("golden retriever", "tabby")
    rb = _rb({"imagefolder:pets": root}, **{"imagefolder:pets": options})
    assert real_templates("imagefolder:pets", rb) == (str(templates),)
    assert real_templates("imagenet", rb) == ("single",)
    names.write_text("dog\n")
    with pytest.raises(DatasetError, match=r"has 1 names but .* has 2 class folders; give one name per line"):
        imagefolder_options("imagefolder:pets", f"{root};classnames={names}")
    with pytest.raises(DatasetError, match="option 'labels=x' is not one of classnames=FILE, templates=FILE"):
        imagefolder_options("imagefolder:pets", f"{root};labels=x")
    with pytest.raises(DatasetError, match="templates file .*nope.txt does not exist"):
        imagefolder_options("imagefolder:pets", f"{root};templates={tmp_path / 'nope.txt'}")
    templates.write_text("a photo\n")
    with pytest.raises(DatasetError, match=r"each containing '\{c\}'"):
        imagefolder_options("imagefolder:pets", f"{root};templates={templates}")
    for good in ("imagenet", "imagenet-v2", "ood:textures", "imagefolder:pets", "coco"):
        check_data_name(good)
    for bad, hint in (("imagenett", "did you mean 'imagenet'"), ("imagefolder:", "imagefolder:NAME"),
                      ("cue_conflict", "did you mean 'cue-conflict'")):
        with pytest.raises(DatasetError, match=rf"--data {bad}=\.\.\.: unknown dataset name; .*{hint}"):
            check_data_name(bad)


def test_every_data_name_the_suite_reads_is_in_the_table():
    """Case 4: one table (clip_robustness.fixtures.real_data.DATA_SETS) lists every --data name the property modules read,
    with the properties that read it; config checks names against it."""
    import ast
    from pathlib import Path

    from clip_robustness.fixtures.real_data import DATA_SETS
    from clip_robustness.plugins.properties import data_properties

    def names_read(tree) -> set[str]:
        """String constants in expressions that read rb_config.data or load a real set by name."""
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "parametrize_real_sets":
                args = node.args[2:]  # (metafunc, argname, names)
            elif isinstance(node, (ast.Call, ast.Compare, ast.Subscript, ast.ListComp)) and (
                    "rb_config.data" in ast.unparse(node)
                    or getattr(getattr(node, "func", None), "id", "") == "load_real_set"):
                args = [node]
            else:
                continue
            found |= {c.value for a in args for c in ast.walk(a)
                      if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        return found

    suite = Path(__file__).parents[1] / "robustness_tests"
    seen = set()
    for module in sorted(suite.glob("test_*.py")):
        tree = ast.parse(module.read_text())
        prop = next(n.value.attr for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "pytestmark")
        for name in names_read(tree):
            seen.add(name)
            assert name in DATA_SETS and prop in data_properties(name), (module.name, name)
    assert {"imagenet", "imagenet-x", "imagenet-c", "cue-conflict", "imagenet-d"} <= seen


# ----------------------------------------------------------------------------- as users run it (pytester)


def test_unknown_data_name_is_a_usage_error(pytester, run_harness, tmp_path):
    """Case 4: a typo in a --data name stops the run at start (exit 4) instead of skipping every test."""
    result = run_harness("--data", f"imagenett={tmp_path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--data imagenett=...: unknown dataset name; did you mean 'imagenet'? "
                                 "known names: imagenet, imagenet-v2, *, ood:NAME, imagefolder:NAME"])
    for i in range(3):  # case 6 at start too: numbered class folders are refused before any model loads
        _img(tmp_path / "cifar" / str(i) / "a.png", i)
    result = run_harness("--data", f"imagenet={tmp_path / 'cifar'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*class folders are numbered (0, 1, 2, ...)*only imagenet-v2 takes class-index "
                                 "folders; for a dataset of other classes use --data ?imagefolder:NAME=*"])


def test_world_export_read_as_imagefolder_gives_the_world_numbers(pytester, run_harness):
    """``python -m clip_robustness.fixtures.world export`` read back by ``--data imagefolder:NAME=DIR`` gives the world
    split's top-1 exactly (PNG is lossless; class order and item order do not change top-1); an unreadable
    image in such a folder is one sentence naming the file."""
    from pathlib import Path

    from clip_robustness.fixtures.world.cli import main as world_cli

    out = pytester.path / "wt"
    assert world_cli(["export", "--split", "test", "--n", "40", "--seed", "0", "--out", str(out)]) == 0
    suite = Path(__file__).parents[1] / "robustness_tests"
    pytester.makepyfile(test_accuracy=(suite / "test_accuracy.py").read_text())
    args = ("--model", "embedded:rn-clip", "--limit", "40", "--templates", "single",
            "-k", "top1_real or (top1_world and not shift)")
    run_harness(*args, "--data", f"imagefolder:wt={out / 'images'}").assert_outcomes(passed=2)
    rows = json.loads((pytester.path / "reports" / "robustness.json").read_text())["results"]
    top1 = {r["dataset"]: r for r in rows if r["metric"] == "top1"}
    assert set(top1) == {"world:test", "wt"}
    assert top1["wt"]["value"] == top1["world:test"]["value"] and top1["wt"]["n"] == top1["world:test"]["n"] == 40
    assert top1["wt"]["extra"]["classes"] == 10  # every ID class has its folder, even one the 40 images miss

    broken = next((out / "images").glob("*/*.png"))
    broken.write_bytes(b"not a png")
    result = run_harness(*args, "--data", f"imagefolder:wt={out / 'images'}", "--embedding-cache", "off")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*could not read image {broken}*remove or replace the file*"])
    assert "_read_image" not in result.stdout.str()  # no traceback
