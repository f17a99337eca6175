"""Retrieval data: per-query hits vs the registry's recalls, world caption sets, perturbations,
and the Karpathy-split loader."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clip_robustness.fixtures.datasets import DatasetError, world_dataset
from clip_robustness.fixtures.retrieval_data import (PERTURBATIONS, SYNONYMS, CaptionSet, fix_articles, karpathy_caption_set,
                                     perturb, retrieval_hits, world_caption_set)
from clip_robustness.plugins.metrics import recall_at_k, retrieval_recalls


def test_hits_by_hand():
    # 2 images, 2 captions each (image-major). Captions: c0, c1 of image 0; c2, c3 of image 1.
    img = np.array([[1.0, 0.0], [0.0, 1.0]])
    txt = np.array([[0.6, 0.8],    # c0: closer to image 1 than image 0
                    [1.0, 0.1],    # c1: image 0's best caption
                    [0.9, 0.2],    # c2: closer to image 0
                    [0.7, 0.7]])   # c3: a tie between the images (cosine 0.707 to both)
    hits = retrieval_hits(img, txt, 2, ks=(1, 2))
    # image 0 ranks c1 (0.995) > c2 (0.976) > c3 > c0: its own caption c1 is first
    # image 1 ranks c0 (0.8) > c3 (0.707) > c2 > c1: its first caption is c0 (image 0's) -> miss at 1, hit at 2
    np.testing.assert_array_equal(hits["i2t_r1"], [1.0, 0.0])
    np.testing.assert_array_equal(hits["i2t_r2"], [1.0, 1.0])
    # t2i: c0 -> image 1 (miss), c1 -> image 0 (hit); c2 -> image 0 (miss); c3 tie -> pessimistic miss
    np.testing.assert_array_equal(hits["t2i_r1"], [0.5, 0.0])
    np.testing.assert_array_equal(hits["t2i_r2"], [1.0, 1.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hit_means_equal_the_registry_recalls(seed):
    rng = np.random.default_rng(seed)
    n, per = 40, 5
    img = rng.normal(size=(n, 8))
    txt = img.repeat(per, 0) * 0.5 + rng.normal(size=(n * per, 8))
    txt[:7] = txt[7]  # exact ties
    hits = retrieval_hits(img, txt, per, ks=(1, 5, 10))
    expected = retrieval_recalls(img, txt, np.repeat(np.arange(n), per), ks=(1, 5, 10))
    assert {k: float(np.mean(v)) for k, v in hits.items()} == pytest.approx(expected)
    sim = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    pos = np.repeat(np.arange(n), per)[None, :] == np.arange(n)[:, None]
    assert float(np.mean(hits["i2t_r5"])) == pytest.approx(recall_at_k(sim, pos, k=5))


def test_hits_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="need"):
        retrieval_hits(np.ones((3, 4)), np.ones((14, 4)), 5)


@pytest.fixture(scope="module")
def world_set() -> CaptionSet:
    return world_caption_set(world_dataset("test", n=6))


def test_world_captions_are_canonical_first_and_reproducible(world_set):
    from clip_robustness.fixtures.world import SceneSpec

    assert len(world_set.captions) == 30 and world_set.per_image == 5
    np.testing.assert_array_equal(world_set.text_to_image, np.repeat(np.arange(6), 5))
    for i, meta in enumerate(world_set.images.meta):
        assert world_set.captions[5 * i] == SceneSpec.from_dict(meta).caption()
        assert SceneSpec.from_dict(meta).shape in " ".join(world_set.captions[5 * i:5 * i + 5])
    assert world_caption_set(world_dataset("test", n=6)).captions == world_set.captions
    head = world_set.head(2)
    assert len(head.images) == 2 and head.captions == world_set.captions[:10]
    with pytest.raises(ValueError, match="exactly 5 per image"):
        CaptionSet(world_set.images, world_set.captions[:-1])


def test_perturbations():
    caption = "a large orange striped cube on a wooden floor"
    keys = ["k"]
    assert perturb([caption], "synonym", keys) == ["a big amber banded box on a wooden ground"]
    assert perturb([caption], "attribute_drop", keys) == ["a cube on a wooden floor"]
    assert perturb(["a photo of a red sphere."], "attribute_drop", keys) == ["a photo of a sphere."]
    shuffled = perturb([caption], "word_order", keys)[0]
    assert sorted(shuffled.split()) == sorted(caption.split()) and shuffled != caption
    para = perturb([caption + "."], "paraphrase", keys)[0]
    assert caption in para and not para.endswith(".") and para != caption
    for kind in PERTURBATIONS:  # deterministic per key
        assert perturb([caption] * 3, kind, ["a", "b", "c"]) == perturb([caption] * 3, kind, ["a", "b", "c"])
    assert fix_articles("a ivory box and an box") == "an ivory box and a box"
    assert perturb(["a hexagonal prism and a diagonally striped torus"], "synonym", keys) == \
        ["a hexagonal column and an obliquely banded donut"]
    with pytest.raises(ValueError, match="unknown caption perturbation"):
        perturb([caption], "typo", keys)
    with pytest.raises(ValueError, match="1 captions but 2 keys"):
        perturb([caption], "synonym", ["a", "b"])


def test_synonyms_cover_the_world_vocabulary_without_collisions():
    from clip_robustness.fixtures.world.spec import ALL_CLASSES, COLORS

    vocabulary = set(ALL_CLASSES) | set(COLORS)
    assert not (set(SYNONYMS.values()) & vocabulary), "a synonym must not be another world word"
    assert set(COLORS) <= set(SYNONYMS)


def test_perturbed_set_keeps_images_and_counts(world_set):
    for kind in PERTURBATIONS:
        p = world_set.perturbed(kind)
        assert p.images is world_set.images and len(p.captions) == len(world_set.captions)
        assert p.captions != world_set.captions


def write_karpathy(root, name: str, entries: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"dataset_{name}.json").write_text(json.dumps({"images": entries, "dataset": name}))


def test_karpathy_loader_coco_layout(tmp_path):
    (tmp_path / "val2014").mkdir()
    entries = []
    for i, split in enumerate(["test", "train", "test"]):
        fname = f"COCO_val2014_{i:012d}.jpg"
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tmp_path / "val2014" / fname)
        entries.append({"filepath": "val2014", "filename": fname, "split": split,
                        "sentences": [{"raw": f" image {i} caption {j} "} for j in range(6)]})
    write_karpathy(tmp_path, "coco", entries)
    cs = karpathy_caption_set("coco", tmp_path)
    assert len(cs.images) == 2 and cs.captions[:2] == ("image 0 caption 0", "image 0 caption 1")
    assert cs.captions[5] == "image 2 caption 0" and len(cs.captions) == 10
    assert cs.images.images([1])[0].shape == (20, 30, 3) and cs.images.images([1])[0][0, 0, 0] == 80


def test_karpathy_loader_flickr_layout_and_errors(tmp_path):
    (tmp_path / "flickr30k-images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "flickr30k-images" / "1.jpg")
    sentences = [{"raw": f"c{j}"} for j in range(5)]
    write_karpathy(tmp_path, "flickr30k", [{"filename": "1.jpg", "split": "test", "sentences": sentences}])
    assert karpathy_caption_set("flickr30k", tmp_path).captions == ("c0", "c1", "c2", "c3", "c4")
    write_karpathy(tmp_path, "flickr30k", [{"filename": "2.jpg", "split": "test", "sentences": sentences}])
    with pytest.raises(DatasetError, match="image 2.jpg not found"):
        karpathy_caption_set("flickr30k", tmp_path)
    write_karpathy(tmp_path, "flickr30k", [{"filename": "1.jpg", "split": "test", "sentences": sentences[:3]}])
    with pytest.raises(DatasetError, match="has 3 captions, need 5"):
        karpathy_caption_set("flickr30k", tmp_path)
    with pytest.raises(DatasetError, match="no Karpathy split file"):
        karpathy_caption_set("coco", tmp_path / "flickr30k-images")
    with pytest.raises(DatasetError, match=r"no Karpathy split file \(dataset_coco.json\) in the folder; it holds "
                                           r"dataset_flickr30k.json, flickr30k's split file: pass it as --data flickr30k="):
        karpathy_caption_set("coco", tmp_path)  # another set's split file is never read in its place
    with pytest.raises(DatasetError, match="does not exist"):
        karpathy_caption_set("coco", tmp_path / "missing")
