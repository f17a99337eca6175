"""Dataset adapters against tiny folders made here: ImageFolder, ImageNet layouts, OOD folders, splits."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fixtures.datasets import DatasetError, image_folder, imagenet_folder, world_dataset
from fixtures.real_data import calibration_split, classification_dataset, ood_dataset


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
    _img(tmp_path / "v2" / "1" / "y.jpeg", 2)  # ImageNet-V2 index folders: class 1
    assert imagenet_folder("imagenet", tmp_path / "val").labels.tolist() == [0]
    v2 = imagenet_folder("imagenet-v2", tmp_path / "v2")
    assert v2.labels.tolist() == [1] and v2.classnames[1] == IMAGENET_CLASSNAMES[1]
    _img(tmp_path / "bad" / "dogs" / "z.png", 3)
    with pytest.raises(DatasetError, match="neither ImageNet wnids"):
        imagenet_folder("imagenet", tmp_path / "bad")


def test_subset_sets_are_scored_over_their_own_classes(tmp_path):
    _img(tmp_path / "r" / "n01443537" / "a.png", 1)  # goldfish (class 1)
    _img(tmp_path / "r" / "n01484850" / "b.png", 2)  # great white shark (class 2)
    ds = classification_dataset("imagenet-r", tmp_path / "r")
    assert len(ds.classnames) == 2 and ds.labels.tolist() == [0, 1]


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
    from fixtures.datasets import ImageDataset

    labels = np.array([0, 0, 0, 0, 1, 1, 2])  # a class-sorted folder
    ds = ImageDataset("d", ("a", "b", "c"), labels, tuple(f"i{k}" for k in range(7)),
                      loader=lambda idx: [np.full((2, 2, 3), k, np.uint8) for k in idx])
    head = ds.spread_head(5)
    assert head.item_ids == ("i0", "i1", "i4", "i5", "i6")  # one of each class, then the second of each
    np.testing.assert_array_equal(head.labels, [0, 0, 1, 1, 2])
    assert [int(im[0, 0, 0]) for im in head.images()] == [0, 1, 4, 5, 6]
    assert ds.spread_head(None) is ds and ds.spread_head(7) is ds
