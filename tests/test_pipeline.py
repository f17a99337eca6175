"""Parallel decoding (clip_robustness.fixtures.pipeline): the same embeddings as the serial path, errors unchanged."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clip_robustness.fixtures.cache import EmbeddingCache
from clip_robustness.fixtures.datasets import DatasetError, image_folder
from clip_robustness.fixtures.embed import image_embeddings
from clip_robustness.fixtures.pipeline import WORKERS_ENV, decode_workers

from tests.conftest import RANDOM_MODEL


@pytest.fixture(scope="module")
def model():
    from clip_robustness.fixtures.models import load_model, parse_model_spec

    loaded = load_model(parse_model_spec(RANDOM_MODEL))
    loaded.batch_size = 7  # several batches, and sub-batches cut at their boundaries
    return loaded


def _quirky_folder(root):
    """JPEGs of different sizes, CMYK and grayscale JPEGs, a PNG: 23 images in two class folders."""
    rng = np.random.default_rng(0)
    for k in range(20):
        h, w = (int(v) for v in rng.integers(20, 140, 2))
        folder = root / ("cat" if k % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{k:02d}.jpg", quality=85)
    Image.new("CMYK", (90, 50), (0, 255, 255, 0)).save(root / "cat" / "cmyk.jpg")
    Image.new("L", (33, 77), 128).save(root / "dog" / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (41, 29, 3), dtype=np.uint8)).save(root / "dog" / "rgb.png")
    return root


def test_parallel_decoding_equals_the_serial_path_bitwise(tmp_path, model, monkeypatch):
    """Worker threads (decode, corruption, preprocess per sub-batch) give the serial path's embeddings
    bitwise, with and without a corruption condition, and equal preprocessing everything up front."""
    import torch

    import clip_robustness.fixtures.pipeline
    from clip_robustness.fixtures.corruption_cells import CORRUPTED, corruption_condition

    monkeypatch.setattr(clip_robustness.fixtures.pipeline, "SUB_BATCH", 3)
    dataset = image_folder("quirks", _quirky_folder(tmp_path))
    assert dataset.reads_files and len(dataset) == 23
    got = {}
    for workers in ("0", "3"):
        monkeypatch.setenv(WORKERS_ENV, workers)
        CORRUPTED.clear()  # each path corrupts for itself
        got[workers] = [image_embeddings(model, dataset, EmbeddingCache(None), condition)
                        for condition in (None, corruption_condition("gaussian_noise", 3))]
    for serial, parallel in zip(got["0"], got["3"]):
        assert serial.shape == (23, model.embed_dim) and np.array_equal(serial, parallel)
    assert not np.array_equal(got["0"][0], got["0"][1])  # the condition was applied
    # the pre-pipeline formula: read, preprocess and stack per batch of model.batch_size, then encode
    paths = dataset.loader.paths
    with torch.inference_mode():
        reference = np.concatenate([model.model.encode_image(torch.stack(
            [model.preprocess(Image.open(p).convert("RGB")) for p in paths[b:b + 7]]), normalize=True).numpy()
            for b in range(0, 23, 7)])
    assert np.array_equal(reference, got["3"][0])


def test_an_unreadable_image_in_a_worker_is_the_same_one_sentence(tmp_path, model, monkeypatch):
    """A DatasetError raised in a decode thread reaches the caller unchanged (the plugin turns it into the
    failed test's one sentence, tests/test_datasets.py::test_world_export_read_as_imagefolder_...)."""
    root = _quirky_folder(tmp_path)
    broken = root / "dog" / "10.jpg"
    broken.write_bytes(b"not a jpeg")
    messages = []
    for workers in ("0", "3"):
        monkeypatch.setenv(WORKERS_ENV, workers)
        with pytest.raises(DatasetError) as info:
            image_embeddings(model, image_folder("quirks", root), EmbeddingCache(None))
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"could not read image {broken} (") and \
        messages[0].endswith("); remove or replace the file")


def test_a_limited_folder_still_reads_in_workers(tmp_path):
    """--limit (spread_head, subset) keeps the file loader, so limited runs decode in parallel too."""
    dataset = image_folder("quirks", _quirky_folder(tmp_path))
    limited = dataset.spread_head(5)
    assert limited.reads_files and limited.head(3).reads_files
    assert [im.shape for im in limited.images([0, 4])] == [im.shape for im in dataset.images(
        [dataset.meta.index(limited.meta[i]) for i in (0, 4)])]


def test_decode_workers_rule_and_override(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    import os

    cores = len(os.sched_getaffinity(0))
    assert decode_workers("cpu") == min(4, cores) and decode_workers("cuda:0") == min(16, cores)
    monkeypatch.setenv(WORKERS_ENV, "0")
    assert decode_workers("cuda") == 0
    monkeypatch.setenv(WORKERS_ENV, "two")
    with pytest.raises(ValueError, match=r"^ROBUSTNESS_DECODE_WORKERS='two' is not a whole number; set it"):
        decode_workers()
