"""ImageNet-D loader against tiny folders in its published layout, written here with PIL."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clip_robustness.fixtures.datasets import DatasetError
from clip_robustness.fixtures.imagenet_d import clean_classname, imagenet_d_splits


def _img(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_splits_share_the_union_of_class_folders(tmp_path):
    _img(tmp_path / "background" / "backpack" / "1.jpg", 10)
    _img(tmp_path / "background" / "coffee_or_french_press" / "2.jpg", 20)
    _img(tmp_path / "texture" / "backpack" / "3.png", 30)
    _img(tmp_path / "texture" / "t-shirt" / "4.png", 40)
    _img(tmp_path / "texture" / "laptop_open" / "5.png", 50)
    _img(tmp_path / "questions" / "ignored" / "q.png", 0)  # not a split
    splits = imagenet_d_splits(tmp_path)
    assert list(splits) == ["imagenet-d:background", "imagenet-d:texture"]  # material absent: skipped
    bg, tx = splits["imagenet-d:background"], splits["imagenet-d:texture"]
    # one label space, the reference's 113 classes (imgnet_d_dir2imgnet_d_id.txt ids), whatever the copy holds
    assert bg.classnames == tx.classnames and len(bg.classnames) == 113
    assert [bg.classnames[i] for i in (1, 19, 40, 89)] == ["backpack", "coffee or french press", "laptop (open)",
                                                          "t shirt"]
    assert bg.labels.tolist() == [1, 19]
    assert tx.labels.tolist() == [1, 40, 89]
    assert bg.name == "imagenet-d:background" and tx.images([2])[0][0, 0, 0] == 40
    assert len(set(bg.item_ids)) == 2


def test_class_names_are_cleaned_as_in_the_reference():
    assert clean_classname("coffee/french press") == "coffee or french press"
    assert clean_classname("mixing/salad_bowl") == "mixing or salad bowl"
    assert clean_classname("T-shirt") == "t shirt"
    assert clean_classname("binder_(closed)") == "binder (closed)"


def test_a_folder_outside_the_113_classes_is_refused(tmp_path):
    _img(tmp_path / "texture" / "backpack" / "1.jpg", 1)
    _img(tmp_path / "texture" / "spaceship" / "2.jpg", 2)
    with pytest.raises(DatasetError, match=r"class folders \['spaceship'\] are not among ImageNet-D's 113 classes"):
        imagenet_d_splits(tmp_path)


def test_errors_say_what_is_wrong_and_how_to_fix_it(tmp_path):
    with pytest.raises(DatasetError, match="folder does not exist.*background/, texture/, material/"):
        imagenet_d_splits(tmp_path / "nope")
    (tmp_path / "ImageNet-D").mkdir()
    with pytest.raises(DatasetError, match=r"none of the split folders background/, texture/, material/.*"
                                           r"found: ImageNet-D/"):
        imagenet_d_splits(tmp_path)
    root = tmp_path / "ImageNet-D"
    _img(root / "background" / "backpack" / "1.jpg", 1)
    (root / "material" / "bench").mkdir(parents=True)  # class folder without images
    with pytest.raises(DatasetError, match="split folder material/ holds no images.*material/<class folder>/<image>"):
        imagenet_d_splits(root)
    (root / "material" / "bench").rmdir()  # and a split without class folders
    with pytest.raises(DatasetError, match="split folder material/ holds no images"):
        imagenet_d_splits(root)
