"""Where a suite run's time goes: cold and warm wall time of a one-model run and seconds per bucket.

    python scripts/bench_suite.py                                   # embedded:rn-clip, default sizes
    python scripts/bench_suite.py --limit 300 -k "calibration or ood or accuracy or retrieval"

Runs the suite twice in subprocesses on one fresh embedding cache: cold (empty cache), then warm
(the same cache, nothing changed), and prints one table: wall seconds, seconds per bucket, the
cache's hits and misses, and the warm/cold ratios. Buckets are measured in the test process by this
file loaded as a pytest plugin (``-p bench_suite``), which times the outermost call of each bucket's
functions (``BUCKETS``); so far: ``bootstrap`` (every bootstrap interval, cached or not). Threads:
``OMP_NUM_THREADS`` as given (default 1, comparable on a busy machine). Serial runs only (no -n).
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE_ENV = "BENCH_SUITE_PROBE"  # where the plugin writes its bucket totals (JSON)

# bucket -> functions (module, attribute) whose outermost calls it times; missing ones are skipped
BUCKETS: dict[str, list[tuple[str, str]]] = {
    "bootstrap": [("fixtures.pytest_fixtures", "_cached_interval"), ("plugins.stats", "bootstrap_ci"),
                  ("plugins.stats", "bootstrap_ci_two_sample"), ("plugins.stats", "paired_bootstrap_delta")],
}
_totals: dict[str, dict[str, float]] = {}


def _wrap_bucket(bucket: str, targets: list[tuple[str, str]]) -> None:
    """Replace each target function by a timer; one depth counter per bucket, so nested calls (a cached
    interval computing a bootstrap) count once."""
    depth = [0]
    total = _totals.setdefault(bucket, {"seconds": 0.0, "calls": 0})

    def timed(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    total["seconds"] += time.perf_counter() - start
                    total["calls"] += 1

        return wrapper

    for module_name, attr in targets:
        module = importlib.import_module(module_name)
        if hasattr(module, attr):  # absent in older trees (e.g. before the CI cache)
            setattr(module, attr, timed(getattr(module, attr)))


def pytest_configure(config) -> None:
    """The probe (only when run by this script): wrap each bucket's functions in its timer."""
    if os.environ.get(PROBE_ENV):
        for bucket, targets in BUCKETS.items():
            _wrap_bucket(bucket, targets)


def pytest_unconfigure(config) -> None:
    path = os.environ.get(PROBE_ENV)
    if path and not hasattr(config, "workerinput"):
        Path(path).write_text(json.dumps(_totals))


def run_suite(label: str, args: argparse.Namespace, cache: Path, work: Path) -> dict:
    probe = work / f"{label}.probe.json"
    report = work / label
    env = {**os.environ, PROBE_ENV: str(probe), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "scripts"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "robustness_tests", "-p", "bench_suite", "-q", "-p", "no:cacheprovider",
           "--model", args.model, "--report-dir", str(report), "--embedding-cache", str(cache)]
    cmd += (["--limit", str(args.limit)] if args.limit else []) + (["-k", args.k] if args.k else [])
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if not probe.exists():
        sys.exit(f"the {label} run wrote no measurements (exit {done.returncode}):\n{done.stdout[-3000:]}"
                 f"{done.stderr[-3000:]}")
    run = json.loads((report / "robustness.json").read_text())["run"] if (report / "robustness.json").exists() else {}
    return {"wall": wall, "buckets": json.loads(probe.read_text()), "cache": run.get("cache", {}),
            "exit": done.returncode}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:rn-clip")
    parser.add_argument("--limit", type=int, default=None, help="samples per dataset (default: the suite's sizes)")
    parser.add_argument("-k", default=None, help="pytest -k expression (default: the whole suite)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the cache and reports (default: a temp dir)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_suite_"))
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    results = {label: run_suite(label, args, cache, work) for label in ("cold", "warm")}

    buckets = sorted({b for r in results.values() for b in r["buckets"]})
    print(f"model {args.model}, limit {args.limit or 'default'}, -k {args.k or '(all)'}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}, work {work}")
    print("| run | wall s | " + " | ".join(f"{b} s (calls)" for b in buckets) + " | cache hits / misses | exit |")
    print("|---" * (len(buckets) + 4) + "|")
    for label, r in results.items():
        cells = [f"{r['buckets'].get(b, {}).get('seconds', 0):.2f} ({r['buckets'].get(b, {}).get('calls', 0)})"
                 for b in buckets]
        print(f"| {label} | {r['wall']:.1f} | " + " | ".join(cells)
              + f" | {r['cache'].get('hits', '?')} / {r['cache'].get('misses', '?')} | {r['exit']} |")
    cold, warm = results["cold"], results["warm"]
    print(f"warm / cold wall: {warm['wall'] / cold['wall']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
