"""The embedding cache: content addressing, concurrent writers, corrupt entries, unusable folders."""
from __future__ import annotations

import multiprocessing as mp
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from clip_robustness.fixtures.cache import CacheWarning, EmbeddingCache, cache_key


def _worker(root: str, counter_dir: str, barrier) -> None:
    cache = EmbeddingCache(Path(root))
    barrier.wait()  # all processes ask for the same key at the same moment

    def compute() -> np.ndarray:
        # every computation leaves a file behind, so the test can count them across processes
        Path(counter_dir, f"computed-{os.getpid()}").touch()
        return np.arange(12, dtype=np.float32).reshape(3, 4)

    value = cache.get_or_compute({"model": "m", "items": "abc"}, compute)
    assert np.array_equal(value, np.arange(12, dtype=np.float32).reshape(3, 4))


def test_concurrent_writers_compute_once(tmp_path):
    counter = tmp_path / "counter"
    counter.mkdir()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "cache"), str(counter), barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(list(counter.iterdir())) == 1, "the lock must make exactly one process compute the entry"


def test_hit_after_miss_and_key_sensitivity(tmp_path):
    cache = EmbeddingCache(tmp_path)
    calls = []
    parts = {"weights": "w1", "condition": "fog(severity=1)"}
    a = cache.get_or_compute(parts, lambda: calls.append(1) or np.ones(3))
    fresh = EmbeddingCache(tmp_path)  # a new process: no in-memory memo
    b = fresh.get_or_compute(parts, lambda: calls.append(1) or np.zeros(3))
    assert np.array_equal(a, b) and calls == [1]
    assert (fresh.hits, fresh.misses) == (1, 0)
    for changed in ({"weights": "w2"}, {"condition": "fog(severity=2)"}, {"extra": 1}):
        assert cache_key({**parts, **changed}) != cache_key(parts)


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "swap"])
def test_corrupt_entry_is_recomputed_with_warning(tmp_path, damage):
    """"empty" is what a crash can leave of an entry, which is written without fsync (fixtures/_io.py)."""
    cache = EmbeddingCache(tmp_path)
    parts = {"k": 1}
    cache.get_or_compute(parts, lambda: np.arange(5.0))
    path = cache.path_for(cache_key(parts))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"not an npz")
    else:  # a valid entry of another key copied over this one
        other = EmbeddingCache(tmp_path)
        other.get_or_compute({"k": 2}, lambda: np.arange(5.0) * 7)
        path.write_bytes(other.path_for(cache_key({"k": 2})).read_bytes())
    fresh = EmbeddingCache(tmp_path)
    with pytest.warns(CacheWarning, match="corrupt cache entry"):
        value = fresh.get_or_compute(parts, lambda: np.arange(5.0))
    assert np.array_equal(value, np.arange(5.0)) and fresh.misses == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten entry is clean again
        assert np.array_equal(EmbeddingCache(tmp_path).get_or_compute(parts, lambda: 1 / 0), np.arange(5.0))


def test_unusable_cache_dir_warns_and_computes(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the cache folder should be
    cache = EmbeddingCache(blocker / "sub")
    with pytest.warns(CacheWarning, match="not usable"):
        assert cache.get_or_compute({"a": 1}, lambda: np.ones(2)).sum() == 2


def test_disabled_cache_always_computes(tmp_path):
    cache = EmbeddingCache(None)
    assert cache.get_or_compute({"a": 1}, lambda: np.ones(2)).shape == (2,)
    assert cache.misses == 1 and not list(tmp_path.iterdir())


def test_read_only_cache_serves_hits_and_warns_once(tmp_path, monkeypatch):
    """A CI cache mounted read-only: creating a lock file or an entry fails with EROFS. Tests run as
    root, for whom chmod stops nothing, so the mount's refusal is simulated where the cache writes."""
    import errno

    import clip_robustness.fixtures.cache as cache_module

    filled = EmbeddingCache(tmp_path)
    for i in range(3):
        filled.get_or_compute({"i": i}, lambda i=i: np.full(4, float(i)))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(cache_module.FileLock, "acquire", read_only)
    monkeypatch.setattr(cache_module, "atomic_write", read_only)
    cache = EmbeddingCache(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(3):  # every stored entry is a hit: reading takes no lock
            assert np.array_equal(cache.get_or_compute({"i": i}, lambda: 1 / 0), np.full(4, float(i)))
        assert not caught
        for i in range(3, 6):  # misses are computed and not stored, with one warning for the run
            assert cache.get_or_compute({"i": i}, lambda i=i: np.full(2, float(i))).sum() == 2 * i
    assert [str(w.message) for w in caught if issubclass(w.category, CacheWarning)] == [
        f"embedding cache at {tmp_path} is not usable for writing ([Errno 30] Read-only file system: '{tmp_path}'); "
        "reading what it holds and computing the rest without storing it"]
    assert (cache.hits, cache.misses) == (3, 3)
    assert not cache.path_for(cache_key({"i": 3})).exists()


def test_unwritable_entry_warns_once_and_keeps_the_value(tmp_path, monkeypatch):
    import clip_robustness.fixtures.cache as cache_module

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module, "atomic_write", disk_full)
    cache = EmbeddingCache(tmp_path)
    with pytest.warns(CacheWarning, match="not usable for writing") as caught:
        values = [cache.get_or_compute({"i": i}, lambda i=i: np.full(2, float(i))) for i in range(3)]
    assert len(caught) == 1 and [v[0] for v in values] == [0.0, 1.0, 2.0] and cache.misses == 3


def test_cache_entries_skip_fsync_and_reports_do_not(tmp_path, monkeypatch):
    """A checksummed cache entry needs no fsync (a torn one is recomputed); a report file gets one."""
    import os

    from clip_robustness.fixtures._io import atomic_write_text

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    EmbeddingCache(tmp_path / "c").get_or_compute({"k": 1}, lambda: np.arange(3.0))
    assert synced == []
    atomic_write_text(tmp_path / "robustness.json", "{}")
    assert len(synced) == 1
