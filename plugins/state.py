"""Per-process run state, stashed on ``pytest.Config``: the keys and the few readers of what they hold.

The hook module (clip_robustness.plugins.robustness), the fixtures (clip_robustness.fixtures.pytest_fixtures),
the report session and the recorder all read this state; holding the keys here, below all of them, is what
lets none of them import another for a key (no import cycle; tests/test_architecture.py checks it).
"""
from __future__ import annotations

import os
from typing import Any

import pytest

# The values' types are named in comments, not imported: this module imports nothing of the harness.
RB_CONFIG = pytest.StashKey[Any]()  # clip_robustness.plugins.config.RunConfig, set in pytest_configure
THREADS = pytest.StashKey[tuple]()  # (torch CPU threads per process, why), chosen once on the controller
GATE_FAILURES = pytest.StashKey[list]()  # per item: gate sentences that fail the test at its end
CACHE_SNAPSHOT = pytest.StashKey[tuple]()  # per item: (hits, misses) of the process cache at setup
PROCESS_CACHE = pytest.StashKey[Any]()  # clip_robustness.fixtures.cache.EmbeddingCache, see process_cache
MODELS = pytest.StashKey[dict]()  # model id -> LoadedModel, or the exception its load raised
LMMS = pytest.StashKey[dict]()  # --lmm spec -> loaded LMM, or the exception its load raised


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. under taskset or a CI container's cpuset;
    os.cpu_count() counts the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def test_id(nodeid: str) -> str:
    """A test's node id without the ``@group`` suffix pytest-xdist's ``--dist loadgroup`` appends to a grouped
    test's id (where xdist itself finds it: after the last ``@`` that follows the last ``]``). Seeds, report rows,
    shard keys and the result cache key on this, so a grouped run measures with the seeds of a serial run."""
    at = nodeid.rfind("@")
    return nodeid[:at] if at > nodeid.rfind("]") and at > nodeid.rfind("::") else nodeid


def process_cache(config: pytest.Config) -> Any:
    """One cache object per process (controller or xdist worker); counts hits and misses."""
    if PROCESS_CACHE not in config.stash:
        from clip_robustness.fixtures.cache import EmbeddingCache

        config.stash[PROCESS_CACHE] = EmbeddingCache(config.stash[RB_CONFIG].cache_dir)
    return config.stash[PROCESS_CACHE]


def error_text(err: Exception) -> str:
    """The sentence a load error carries (a KeyError's message is its first argument, unquoted)."""
    return str(err.args[0] if err.args else err)


def load_failure(config: pytest.Config, message: str) -> str | None:
    """The model (or LMM) whose load error a test failed with in this process, read back from the message
    the fixtures fail with, so the report lists it as a load failure, not as a measured model."""
    stored: dict[str, Any] = {**config.stash.get(MODELS, {}), **config.stash.get(LMMS, {})}
    return next((name for name, loaded in stored.items()
                 if isinstance(loaded, Exception) and message in (error_text(loaded), str(loaded))), None)
