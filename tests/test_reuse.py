"""In-process memo and on-disk render cache: a re-run renders nothing, a changed item never hits."""
from __future__ import annotations

import numpy as np
import pytest

from clip_robustness.fixtures import datasets
from clip_robustness.fixtures.cache import EmbeddingCache
from clip_robustness.fixtures.memo import ByteMemo


def test_byte_memo_is_bounded_in_bytes_and_drops_the_least_recently_used():
    memo = ByteMemo(max_bytes=300)
    for k in range(3):
        memo.put(k, np.zeros(100, np.uint8))
    memo.get(0)  # 0 is now the most recent: 1 goes first
    memo.put(3, [np.zeros(50, np.uint8), np.zeros(50, np.uint8)])
    assert 1 not in memo and all(k in memo for k in (0, 2, 3)) and memo._bytes == 300
    assert memo.get_or_compute("big", lambda: np.zeros(301, np.uint8)).nbytes == 301  # returned, not kept
    assert "big" not in memo and memo._bytes <= memo.max_bytes
    calls = []
    memo.get_or_compute(2, lambda: calls.append(1))
    assert not calls  # served from the memo


@pytest.fixture
def renders(monkeypatch):
    """Counts the scenes rendered (per render_batch call), with an empty process memo."""
    from clip_robustness.fixtures import world

    calls, real = [], world.render_batch
    monkeypatch.setattr(world, "render_batch", lambda specs, **kw: calls.append(len(specs)) or real(specs, **kw))
    monkeypatch.setattr(datasets, "RENDERS", ByteMemo())
    return calls


def test_renders_are_memoised_and_cached_on_disk_by_item_id(tmp_path, renders, monkeypatch):
    from clip_robustness.fixtures.world import sample_specs
    from clip_robustness.fixtures.world.renderer import render_batch  # the real one (the fixture counts clip_robustness.fixtures.world's)

    ds = datasets.world_dataset("test", n=60, cache=EmbeddingCache(tmp_path))
    got = ds.images([55, 3])
    assert renders == [50, 10]  # the blocks of 50 positions holding items 55 and 3
    rgb, depth = render_batch([sample_specs("test", 60, 0)[i] for i in (55, 3)])
    np.testing.assert_array_equal(np.stack(got), rgb)
    np.testing.assert_array_equal(np.stack(ds.depths([55, 3])), depth)  # depth rendered with the rgb: memo
    ds.subset([3, 4], "").images([0, 1])
    assert renders == [50, 10]
    monkeypatch.setattr(datasets, "RENDERS", ByteMemo())  # a new process: read from disk, nothing rendered
    cache = EmbeddingCache(tmp_path)
    again = datasets.world_dataset("test", n=60, cache=cache).images([55, 3])
    assert renders == [50, 10] and (cache.hits, cache.misses) == (2, 0)
    np.testing.assert_array_equal(np.stack(again), rgb)
    # a changed item id (seed, size) or render version never hits
    datasets.world_dataset("test", n=60, seed=1, cache=cache).images([3])
    datasets.world_dataset("test", n=60, size=32, cache=cache).images([3])
    monkeypatch.setattr(datasets, "RENDER_VERSION", datasets.RENDER_VERSION + 1)  # a new renderer, a new process
    monkeypatch.setattr(datasets, "RENDERS", ByteMemo())
    datasets.world_dataset("test", n=60, cache=cache).images([3])
    assert renders == [50, 10, 50, 50, 50] and cache.misses == 3
    datasets.render_specs(sample_specs("test", 2, 7), [0, 1])  # memoised, not on disk
    datasets.render_specs(sample_specs("test", 2, 7), [0, 1], cache=cache)  # still written
    assert cache.misses == 4


def test_embeddings_of_renders_miss_after_a_renderer_change(tmp_path, monkeypatch):
    """World item ids name the scene, size and seed; the renderer's version is in every key built on them."""
    from clip_robustness.fixtures.embed import image_embeddings
    from clip_robustness.fixtures.models import load_model, parse_model_spec

    model = load_model(parse_model_spec("embedded:rn-clip"))
    image_embeddings(model, datasets.world_dataset("test", n=10), EmbeddingCache(tmp_path))
    monkeypatch.setattr(datasets, "RENDERS", ByteMemo())
    again = EmbeddingCache(tmp_path)
    image_embeddings(model, datasets.world_dataset("test", n=10, cache=again), again)
    assert (again.hits, again.misses) == (1, 0)  # the embeddings: nothing rendered
    monkeypatch.setattr(datasets, "RENDER_VERSION", datasets.RENDER_VERSION + 1)  # a new renderer, a new process
    monkeypatch.setattr(datasets, "RENDERS", ByteMemo())
    changed = EmbeddingCache(tmp_path)
    image_embeddings(model, datasets.world_dataset("test", n=10, cache=changed), changed)
    assert (changed.hits, changed.misses) == (0, 2)  # the embeddings and their render block


def test_factor_suite_renders_are_kept_on_disk(tmp_path, renders, monkeypatch):
    """The factor suite's scenes are the same for every model: a new checkpoint's run reads them from disk."""
    from clip_robustness.fixtures.factors import factor_suite

    first = factor_suite(seed=0, limit=3, cache=EmbeddingCache(tmp_path))
    rgb = first.dataset("background", "bricks").images()
    assert renders == [3]
    monkeypatch.setattr(datasets, "RENDERS", ByteMemo())  # a new process
    again = factor_suite(seed=0, limit=3, cache=EmbeddingCache(tmp_path)).dataset("background", "bricks").images()
    assert renders == [3]
    np.testing.assert_array_equal(np.stack(again), np.stack(rgb))


def test_a_condition_giving_images_of_different_sizes_is_used_and_not_kept(tmp_path):
    """A team's own condition may crop each render differently: its images are embedded, not cached."""
    from clip_robustness.fixtures.cache import cache_key, digest_strings
    from clip_robustness.fixtures.embed import ImageTransform, image_embeddings
    from clip_robustness.fixtures.models import load_model, parse_model_spec

    calls = []

    def crop(images, item_ids):  # a different size per image
        calls.append(len(images))
        return [im[: 40 + k % 3, : 40 + k % 3] for k, im in enumerate(images)]

    model, ds = load_model(parse_model_spec("embedded:rn-clip")), datasets.world_dataset("test", n=6)
    cache = EmbeddingCache(tmp_path)
    first = image_embeddings(model, ds, cache, ImageTransform("team-crop", crop))
    assert first.shape == (6, model.embed_dim) and calls == [6]

    def kept(spec: str) -> bool:  # the entry of the six items (one decode sub-batch) under condition ``spec``
        return cache.path_for(cache_key({"kind": "condition-images", "condition": spec, "items": digest_strings(
            list(ds.item_ids)), "render_version": datasets.RENDER_VERSION})).exists()

    assert not kept("team-crop")
    image_embeddings(model, ds, cache, ImageTransform("team-flip", lambda images, ids: [im[::-1] for im in images]))
    assert kept("team-flip")  # same-sized images are kept
    again = EmbeddingCache(tmp_path)  # the embeddings were
    np.testing.assert_array_equal(image_embeddings(model, ds, again, ImageTransform("team-crop", crop)), first)
    assert calls == [6]


def test_world_depth_source_shares_the_render_memo(renders):
    from clip_robustness.fixtures.corruption_cells import world_depth_source

    ds = datasets.world_dataset("test", n=5)
    ds.images()
    maps = world_depth_source(ds)(list(ds.item_ids))
    assert renders == [5] and len(maps) == 5 and maps[0].shape == (64, 64)


def test_corrupted_renders_are_kept_on_disk_for_every_model(tmp_path, monkeypatch):
    """A corruption of world renders is computed once: another model (a new checkpoint, a new process)
    reads the corrupted renders from disk, and embeds exactly what corrupting them again would give."""
    from clip_robustness.fixtures import corruption_cells, embed
    from clip_robustness.fixtures.models import load_model, parse_model_spec

    calls, real = [], corruption_cells.corrupt
    monkeypatch.setattr(corruption_cells, "corrupt", lambda im, *a, **k: calls.append(1) or real(im, *a, **k))
    monkeypatch.setattr(corruption_cells, "CORRUPTED", ByteMemo())
    ds = datasets.world_dataset("test", n=40)
    blur = corruption_cells.corruption_condition("glass_blur", 3)
    embed.image_embeddings(load_model(parse_model_spec("embedded:rn-clip")), ds, EmbeddingCache(tmp_path), blur)
    assert len(calls) == 40
    monkeypatch.setattr(corruption_cells, "CORRUPTED", ByteMemo())  # a new process
    other = load_model(parse_model_spec("embedded:rn-clip-small"))
    from_disk = embed.image_embeddings(other, ds, EmbeddingCache(tmp_path), blur)
    assert len(calls) == 40
    monkeypatch.setattr(corruption_cells, "CORRUPTED", ByteMemo())
    np.testing.assert_array_equal(from_disk, embed.image_embeddings(other, ds, EmbeddingCache(None), blur))
    assert len(calls) == 80
    embed.image_embeddings(other, ds, EmbeddingCache(tmp_path), corruption_cells.corruption_condition("glass_blur", 4))
    assert len(calls) == 120  # another severity never hits


def test_samples_are_written_once_per_content_and_linked_from_the_previous_report(tmp_path, monkeypatch):
    """A warm re-run records the same arrays: they are linked from the report folder's samples/, not
    compressed again; within one run, the same arrays are compressed once."""
    import os

    from clip_robustness.plugins import report

    arrays = {"logits": np.arange(12, dtype=np.float32).reshape(4, 3), "labels": np.arange(4)}
    staging = tmp_path / "reports" / ".staging-1"
    (staging / "samples").mkdir(parents=True)
    compressed = []
    original = np.savez_compressed
    monkeypatch.setattr(report.np, "savez_compressed", lambda *a, **k: (compressed.append(1), original(*a, **k)))
    rel = report.save_samples(staging, arrays)
    assert report.save_samples(staging, dict(arrays)) == rel and len(compressed) == 1
    (tmp_path / "reports" / "samples").mkdir()
    os.replace(staging / rel, tmp_path / "reports" / rel)  # now the previous report's file
    second = tmp_path / "reports" / ".staging-2"
    (second / "samples").mkdir(parents=True)
    assert report.save_samples(second, arrays) == rel and len(compressed) == 1
    assert os.path.samefile(second / rel, tmp_path / "reports" / rel)
    loaded = report.load_samples(second, rel)
    np.testing.assert_array_equal(loaded["logits"], arrays["logits"])
