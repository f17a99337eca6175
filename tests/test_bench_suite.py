"""scripts/bench_suite.py's probe: bucket seconds are self time, and a function imported by name elsewhere
is timed at that call site too (issue 14)."""
from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_suite.py"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("bench_suite_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a fresh copy: its totals are this test's alone
    work = types.ModuleType("bench_fake_work")

    def inner() -> None:
        time.sleep(0.05)

    def outer() -> None:
        time.sleep(0.05)
        work.inner()
        work.outer_again(0)

    def outer_again(depth: int) -> None:  # nested calls of one bucket count once
        if depth < 2:
            work.outer_again(depth + 1)

    work.inner, work.outer, work.outer_again = inner, outer, outer_again
    caller = types.ModuleType("bench_fake_caller")
    caller.inner = inner  # as `from bench_fake_work import inner` binds it
    for m in (work, caller):
        monkeypatch.setitem(sys.modules, m.__name__, m)
    module.install({"a": [("bench_fake_work", "outer"), ("bench_fake_work", "outer_again")],
                    "b": [("bench_fake_work", "inner")], "c": [("bench_fake_work", "missing")]})
    return module


def test_buckets_count_self_time_and_rebind_imported_names(bench: types.ModuleType) -> None:
    sys.modules["bench_fake_work"].outer()
    sys.modules["bench_fake_work"].outer_again(0)
    sys.modules["bench_fake_caller"].inner()
    totals = bench._totals
    assert totals["a"]["calls"] == 2 and totals["b"]["calls"] == 2  # outer (once), outer_again; inner twice
    assert 0.04 <= totals["a"]["seconds"] < 0.09  # outer's own sleep, not inner's
    assert 0.09 <= totals["b"]["seconds"] < 0.2  # both inner sleeps, the one via the imported name included
    assert totals.get("c", {}).get("calls", 0) == 0  # an absent target is skipped, not an error


def test_ratios_are_computed_from_the_runs_and_the_floor(bench: types.ModuleType, capsys) -> None:
    def run(wall: float, forward: float) -> dict:
        return {"wall": wall, "startup": 1.0, "buckets": {"forward": {"seconds": forward}}, "cache": {}, "exit": 0}

    results = {"one-model cold": run(80.0, 25.0), "one-model warm": run(4.0, 0.0),
               "one-model checkpoint": run(60.0, 25.0)}
    floors = {"one-model": 20.0, "one-model on 2 processes": 10.0}
    ratios = {name: value for name, value, _ in bench.print_tables(results, floors, None, "no decode")}
    assert ratios == {"one-model: warm / cold wall": 0.05,
                      "one-model: cold wall / forward floor on 1 process (20.0 s)": 4.0,
                      "one-model: new checkpoint wall / forward floor on 1 process": 3.0,
                      "one-model: cold wall / forward floor on 2 processes (10.0 s)": 8.0,
                      "one-model: new checkpoint wall / forward floor on 2 processes": 6.0,
                      "one-model: cold forward bucket / forward floor": 1.25}
    assert "| one-model checkpoint | 60.0 |" in capsys.readouterr().out


def test_probes_of_xdist_workers_are_merged(bench: types.ModuleType, tmp_path: Path) -> None:
    """Under -n N every process writes its probe: seconds add up, images are unique over the processes."""
    import json

    def probe(path: Path, first: float | None, seconds: float, digests: list[str], forwarded: int) -> None:
        path.write_text(json.dumps({"buckets": {"forward": {"seconds": seconds, "worker_seconds": 0.5, "calls": 2}},
                                    "first_test_at": first, "overhead_s": 0.25,
                                    "images": {"m": {"forwarded": forwarded, "digests": digests}} if digests else {}}))

    path = tmp_path / "cold.probe.json"
    probe(path, None, 1.0, [], 0)  # the controller runs no test
    probe(tmp_path / "cold.probe.json.gw0", 12.0, 10.0, ["aa", "bb"], 3)
    probe(tmp_path / "cold.probe.json.gw1", 11.5, 5.0, ["bb", "cc"], 2)
    merged = bench.merge_probes(path)
    assert merged["buckets"]["forward"] == {"seconds": 16.0, "worker_seconds": 1.5, "calls": 6}
    assert merged["first_test_at"] == 11.5 and merged["processes"] == 3 and merged["overhead_s"] == 0.75
    assert merged["images"] == {"m": {"forwarded": 5, "unique": 3}}


def test_a_negative_worker_count_is_one_sentence(bench: types.ModuleType, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        bench.main(["--workers", "-1", "--no-decode"])
    assert stop.value.code == 2 and "--workers -1: give 0 (a serial run) or more workers" in capsys.readouterr().err
