"""Where a suite run's time goes, against the forward-pass floor (issue 14).

    python scripts/bench_suite.py                       # one-model suite (embedded:rn-clip), default sizes
    python scripts/bench_suite.py --zoo                 # also the default six-model suite (~40 min more)
    python scripts/bench_suite.py --limit 300 -k "calibration or ood"     # a quick slice
    python scripts/bench_suite.py --new-checkpoint embedded:rn-clip-ft   # also a new checkpoint's run in CI
    python scripts/bench_suite.py --workers 2           # the suites under pytest -n 2

Each suite runs twice in subprocesses on one fresh embedding cache: cold (empty cache), then warm (the same cache,
nothing changed); with ``--new-checkpoint PREVIOUS`` the one-model suite also runs as a new checkpoint in CI (on a
fresh cache that a run of the PREVIOUS model filled first). In the test process this file, loaded as a pytest
plugin (``-p bench_suite``), times the functions of each bucket (``BUCKETS``), records start-up (process start to
the first test) and each model's unique forwarded images (content digests). Bucket seconds are self time: a call of
one bucket inside another's counts for the inner one only; time spent in decode worker threads is shown apart (it
overlaps the main thread). ``other`` is the wall time no bucket and no start-up explains (fixtures, metrics,
pytest). Then, in this process: the forward floor (a bare open_clip ``encode_image`` over that many images,
preloaded tensors at the model's input size, batches of 256, the run's thread count) and decode throughput
(``measure_decode`` of scripts/bench_decode.py, when present). Prints the tables and the ratios warm/cold,
cold/floor and decode harness/bare; writes them to WORK/bench.json. Threads: OMP_NUM_THREADS as given (default 1,
comparable on a busy machine). ``--workers N`` runs the suites under ``-n N``: bucket seconds are then summed over
the processes (CPU time, not wall), and the floor is also measured on N processes (the images split over N bare
forward loops started together), the cores such a run uses.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE_ENV = "BENCH_SUITE_PROBE"  # where the plugin writes its measurements (JSON)
FLOOR_BATCH = 256

# bucket -> functions (module, "name" or "Class.method") timed; absent ones (older trees) are skipped
BUCKETS: dict[str, list[tuple[str, str]]] = {
    "forward": [("clip_robustness.fixtures.models", "LoadedModel.encode_items"), ("clip_robustness.fixtures.models", "LoadedModel.encode_images"),
                ("clip_robustness.fixtures.models", "LoadedModel.encode_texts")],
    "render": [("clip_robustness.fixtures.datasets", "render_specs"), ("clip_robustness.fixtures.world.renderer", "render"),
               ("clip_robustness.fixtures.world.renderer", "render_batch"), ("clip_robustness.fixtures.world.renderer", "render_views")],
    "corruption": [("clip_robustness.fixtures.corruption_cells", "CorruptionTransform.__call__"), ("clip_robustness.fixtures.corruptions2d", "corrupt"),
                   ("clip_robustness.fixtures.corruption_cells", "Corruption3DTransform.__call__"), ("clip_robustness.fixtures.corruptions3d", "corrupt3d")],
    "bootstrap": [("clip_robustness.plugins.recorder", "_cached_interval"), ("clip_robustness.plugins.stats", "bootstrap_ci"),
                  ("clip_robustness.plugins.stats", "bootstrap_ci_two_sample"), ("clip_robustness.plugins.stats", "paired_bootstrap_delta")],
    "lmm": [("clip_robustness.fixtures.lmm.protocol", "run_protocol")],
    "html": [("clip_robustness.plugins.html.page", "write_html")],
}
_totals: dict[str, dict[str, float]] = {b: {"seconds": 0.0, "worker_seconds": 0.0, "calls": 0} for b in BUCKETS}
_probe: dict = {"first_test_at": None, "overhead_s": 0.0, "images": {}}
_stack = threading.local()  # per thread: [[bucket, seconds of nested timed calls], ...]


def _frames() -> list:
    if not hasattr(_stack, "frames"):
        _stack.frames = []
    return _stack.frames


def timed(bucket: str, fn):
    """``fn`` timed into ``bucket``: self time (nested timed calls go to their own bucket), one call per
    outermost entry into the bucket."""
    total = _totals.setdefault(bucket, {"seconds": 0.0, "worker_seconds": 0.0, "calls": 0})

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        frames = _frames()
        outer = all(f[0] != bucket for f in frames)
        frames.append([bucket, 0.0])
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            _, nested = frames.pop()
            key = "seconds" if threading.current_thread() is threading.main_thread() else "worker_seconds"
            total[key] += elapsed - nested
            total["calls"] += outer
            if frames:
                frames[-1][1] += elapsed

    wrapper.__bench_original__ = fn
    return wrapper


def _untimed(seconds: float) -> None:
    """Probe work (digests) inside a timed call: charged to no bucket."""
    _probe["overhead_s"] += seconds
    if _frames():
        _frames()[-1][1] += seconds


def _count_images(fn):
    """``encode_items(self, n, load, ...)`` with ``load`` wrapped to digest each image it returns."""
    @functools.wraps(fn)
    def wrapper(self, n, load, *args, **kwargs):
        seen = _probe["images"].setdefault(self.id, {"forwarded": 0, "digests": set()})

        def digesting(indices):
            images = load(indices)
            start = time.perf_counter()
            for im in images:
                seen["digests"].add(hashlib.blake2b(im.tobytes() + str(im.shape).encode(), digest_size=16).digest())
            seen["forwarded"] += len(images)
            _untimed(time.perf_counter() - start)
            return images

        return fn(self, n, digesting, *args, **kwargs)

    return wrapper


def install(buckets: dict[str, list[tuple[str, str]]] = BUCKETS) -> None:
    """Wrap every target on its module or class, and rebind it in every loaded module that imported it by
    name (``from clip_robustness.fixtures.datasets import render_specs``), so each call site goes through the timer."""
    for bucket, targets in buckets.items():
        for module_name, attr in targets:
            try:
                owner = importlib.import_module(module_name)
            except ImportError:
                continue
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part, None)
            original = getattr(owner, name, None) if owner is not None else None
            if original is None or hasattr(original, "__bench_original__"):
                continue
            wrapped = timed(bucket, original)
            setattr(owner, name, wrapped)
            if not path:
                for module in list(sys.modules.values()):
                    for key, value in list(getattr(module, "__dict__", {}).items()):
                        if value is original:
                            setattr(module, key, wrapped)


def pytest_collection_finish(session) -> None:
    """The probe (only when run by this script): test modules are imported now, so every name is bound."""
    if os.environ.get(PROBE_ENV):
        from clip_robustness.fixtures import models

        if hasattr(models.LoadedModel, "encode_items"):  # before the timer wraps it: digests are not forward time
            models.LoadedModel.encode_items = _count_images(models.LoadedModel.encode_items)
        install()


def pytest_sessionstart(session) -> None:
    """An xdist controller collects nothing but writes the report: time its HTML."""
    config = session.config
    if os.environ.get(PROBE_ENV) and getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput"):
        install({"html": BUCKETS["html"]})


def pytest_runtest_protocol(item, nextitem) -> None:
    if _probe["first_test_at"] is None:
        _probe["first_test_at"] = time.time()


def pytest_unconfigure(config) -> None:
    """Each process writes its own probe (an xdist worker's beside the controller's); the driver merges them."""
    path = os.environ.get(PROBE_ENV)
    if path:
        worker = getattr(config, "workerinput", {}).get("workerid")
        images = {m: {"forwarded": v["forwarded"], "digests": sorted(d.hex() for d in v["digests"])}
                  for m, v in _probe["images"].items()}
        Path(path + (f".{worker}" if worker else "")).write_text(json.dumps({
            "buckets": _totals, "first_test_at": _probe["first_test_at"], "overhead_s": _probe["overhead_s"],
            "images": images}))


def merge_probes(path: Path) -> dict:
    """The controller's probe and its workers' (``PATH.gwN``): bucket seconds summed over the processes (CPU
    time on all cores, not wall), the first test's start, each model's images (unique over the processes)."""
    probes = [json.loads(p.read_text()) for p in [path, *sorted(path.parent.glob(path.name + ".gw*"))] if p.exists()]
    buckets: dict[str, dict[str, float]] = {}
    images: dict[str, dict] = {}
    for probe in probes:
        for b, t in probe["buckets"].items():
            into = buckets.setdefault(b, {"seconds": 0.0, "worker_seconds": 0.0, "calls": 0})
            for k in into:
                into[k] += t.get(k, 0)
        for m, v in probe["images"].items():
            into = images.setdefault(m, {"forwarded": 0, "digests": set()})
            into["forwarded"] += v["forwarded"]
            into["digests"].update(v["digests"])
    starts = [p["first_test_at"] for p in probes if p["first_test_at"]]
    return {"buckets": buckets, "first_test_at": min(starts) if starts else None,
            "overhead_s": sum(p["overhead_s"] for p in probes), "processes": len(probes),
            "images": {m: {"forwarded": v["forwarded"], "unique": len(v["digests"])} for m, v in images.items()}}


# ------------------------------------------------------------------------------------------------
# the driver


def run_suite(label: str, models: list[str], args: argparse.Namespace, cache: Path, work: Path) -> dict:
    probe = work / f"{label}.probe.json"
    report = work / label
    for stale in [probe, *work.glob(probe.name + ".gw*")]:
        stale.unlink(missing_ok=True)
    env = {**os.environ, PROBE_ENV: str(probe), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "scripts"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "robustness_tests", "-p", "bench_suite", "-q", "-p", "no:cacheprovider",
           "--report-dir", str(report), "--embedding-cache", str(cache), "--device", args.device]
    cmd += [x for m in models for x in ("--model", m)]
    cmd += (["--limit", str(args.limit)] if args.limit else []) + (["-k", args.k] if args.k else [])
    cmd += ["-n", str(args.workers)] if args.workers else []
    launched = time.time()
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if not probe.exists():
        sys.exit(f"the {label} run wrote no measurements (exit {done.returncode}):\n{done.stdout[-3000:]}"
                 f"{done.stderr[-3000:]}")
    measured = merge_probes(probe)
    run = json.loads((report / "robustness.json").read_text())["run"] if (report / "robustness.json").exists() else {}
    first = measured["first_test_at"]
    return {"wall": wall, "startup": (first - launched) if first else None, "buckets": measured["buckets"],
            "overhead_s": measured["overhead_s"], "images": measured["images"], "processes": measured["processes"],
            "cache": run.get("cache", {}),
            "threads": run.get("threads"), "specs": {m: (i or {}).get("spec", m) for m, i in (run.get("models") or {}).items()},
            "exit": done.returncode, "tail": done.stdout.strip().splitlines()[-1:] if done.stdout.strip() else []}


def forward_floor(spec: str, n: int, threads: int, device: str) -> float:
    """Seconds of a bare open_clip ``encode_image`` over ``n`` images (preloaded tensors at the model's input
    size, batches of FLOOR_BATCH) with ``threads`` torch threads; content does not change a forward's cost."""
    start, end = _timed_forward(spec, n, threads, device)
    return end - start


def _timed_forward(spec: str, n: int, threads: int, device: str, barrier=None) -> tuple[float, float]:
    """(start, end) wall times of ``forward_floor``'s loop, which starts after a warm-up and, with ``barrier``
    (``parallel_forward_floor``), once every process is ready."""
    import torch

    from clip_robustness.fixtures.models import load_model, parse_model_spec

    torch.set_num_threads(threads)
    model = load_model(parse_model_spec(spec), device=device).model
    size = model.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    batch = torch.randn(FLOOR_BATCH, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        model.encode_image(batch[:8])  # warm-up: first-call allocations are not the floor
        synchronize()
        if barrier is not None:
            barrier.wait()
        start = time.time()
        for done in range(0, n, FLOOR_BATCH):
            model.encode_image(batch[:min(FLOOR_BATCH, n - done)], normalize=True)
        synchronize()
    return start, time.time()


def parallel_forward_floor(spec: str, n: int, threads: int, device: str, processes: int) -> float:
    """The forward floor on the cores a run under ``-n processes`` uses: ``n`` images split over that many
    processes (``threads`` torch threads each), started together; seconds from the first start to the last end."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(processes, mp_context=context) as pool:
        barrier = manager.Barrier(processes)
        shares = [n // processes + (i < n % processes) for i in range(processes)]
        spans = list(pool.map(_timed_forward, [spec] * processes, shares, [threads] * processes,
                              [device] * processes, [barrier] * processes))
    return max(end for _, end in spans) - min(start for start, _ in spans)


def decode_throughput(args: argparse.Namespace, work: Path) -> tuple[dict | None, str]:
    """(harness and bare images/s, note) from scripts/bench_decode.py (its generated JPEG folder and 224 px
    architecture), when that script exists."""
    try:
        bench_decode = importlib.import_module("bench_decode")
    except ImportError:
        return None, "scripts/bench_decode.py is not present: no decode row"
    folder = bench_decode.make_folder(work / "jpegs", args.decode_images)
    result = bench_decode.measure_decode(folder, args.decode_arch, args.decode_images)
    print(f"decode: {json.dumps(result)}", flush=True)
    return ({"harness": result["harness_images_per_s"], "bare": result["bare_images_per_s"], "raw": result},
            "measure_decode() of scripts/bench_decode.py")


def _fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def print_tables(results: dict[str, dict], floors: dict[str, float], decode: dict | None, decode_note: str) -> list:
    buckets = list(BUCKETS)
    print("| run | wall s | start-up s | " + " | ".join(f"{b} s" for b in buckets)
          + " | other s | cache hits / misses | exit |")
    print("|---" * (len(buckets) + 6) + "|")
    for label, r in results.items():
        cells = []
        for b in buckets:
            t = r["buckets"].get(b, {})
            worker = f" (+{t['worker_seconds']:.1f} in workers)" if t.get("worker_seconds", 0) >= 0.05 else ""
            cells.append(f"{t.get('seconds', 0):.1f}{worker}")
        other = r["wall"] - (r["startup"] or 0) - sum(r["buckets"].get(b, {}).get("seconds", 0) for b in buckets)
        other = f"{other:.1f}" if r.get("processes", 1) == 1 else "n/a"  # summed over processes: not parts of wall
        print(f"| {label} | {r['wall']:.1f} | {_fmt(r['startup'])} | " + " | ".join(cells)
              + f" | {other} | {r['cache'].get('hits', '?')} / {r['cache'].get('misses', '?')} | {r['exit']} |")
    ratios = []
    for suite in sorted({label.rsplit(" ", 1)[0] for label in results}):
        cold, warm = results.get(f"{suite} cold"), results.get(f"{suite} warm")
        target = "≤ 0.05" if suite == "one-model" else "≤ 0.10"
        if cold and warm:
            ratios.append((f"{suite}: warm / cold wall", warm["wall"] / cold["wall"], target))
        checkpoint = results.get(f"{suite} checkpoint")
        for floor in sorted(f for f in floors if f == suite or f.startswith(f"{suite} on ")):
            where = floor.removeprefix(suite).strip() or "on 1 process"
            if cold:
                ratios.append((f"{suite}: cold wall / forward floor {where} ({floors[floor]:.1f} s)",
                               cold["wall"] / floors[floor], "≤ 3" if suite == "one-model" else ""))
            if checkpoint:
                ratios.append((f"{suite}: new checkpoint wall / forward floor {where}",
                               checkpoint["wall"] / floors[floor], ""))
        if cold and floors.get(suite):
            fwd = cold["buckets"].get("forward", {}).get("seconds", 0)
            ratios.append((f"{suite}: cold forward bucket / forward floor", fwd / floors[suite], ""))
    if decode and decode.get("harness") and decode.get("bare"):
        ratios.append((f"decode: harness / bare images/s ({decode['harness']:.1f} / {decode['bare']:.1f})",
                       decode["harness"] / decode["bare"], "≥ 0.9"))
    print("\n| ratio | value | issue 14 target |\n|---|---|---|")
    for name, value, target in ratios:
        print(f"| {name} | {value:.3f} | {target} |")
    if not decode:
        print(f"\n{decode_note}")
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:rn-clip", help="the one-model suite's model")
    parser.add_argument("--zoo", action="store_true", help="also the default six-model suite (cold + warm)")
    parser.add_argument("--limit", type=int, default=None, help="samples per dataset (default: the suite's sizes)")
    parser.add_argument("-k", default=None, help="pytest -k expression (default: the whole suite)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--decode-images", type=int, default=1000, help="JPEGs for the decode measurement")
    parser.add_argument("--decode-arch", default="ViT-B-32:random", help="a 224 px model for the decode measurement")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode measurement")
    parser.add_argument("--new-checkpoint", metavar="PREVIOUS", default=None,
                        help="also time the one-model suite as a new checkpoint in CI: on a fresh cache that a run "
                             "of the PREVIOUS model filled (renders, corrupted renders: what does not depend on "
                             "the model)")
    parser.add_argument("--workers", type=int, default=0,
                        help="run each suite under pytest-xdist with this many workers (-n N); the bucket seconds "
                             "are then summed over the processes, and the forward floor is also measured on N "
                             "processes")
    parser.add_argument("--work", type=Path, default=None, help="folder for the caches and reports (default: temp)")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers {args.workers}: give 0 (a serial run) or more workers")
    sys.path[:0] = [str(REPO), str(REPO / "scripts")]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_suite_"))
    work.mkdir(parents=True, exist_ok=True)
    suites = {"one-model": [args.model]} | ({"six-model": []} if args.zoo else {})  # [] = the default zoo
    print(f"limit {args.limit or 'default'}, -k {args.k or '(all)'}, device {args.device}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}, load average before "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, work {work}", flush=True)
    results: dict[str, dict] = {}
    floors: dict[str, float] = {}
    for suite, models in suites.items():
        cache = work / f"{suite}-cache"
        shutil.rmtree(cache, ignore_errors=True)
        for phase in ("cold", "warm"):
            label = f"{suite} {phase}"
            results[label] = run_suite(label.replace(" ", "-"), models, args, cache, work)
            print(f"{label}: {results[label]['wall']:.1f} s, {' '.join(results[label]['tail'])}", flush=True)
        cold = results[f"{suite} cold"]
        threads = cold["threads"] or int(os.environ.get("OMP_NUM_THREADS", "1"))
        floors[suite] = sum(forward_floor(cold["specs"].get(m, m), v["unique"], threads, args.device)
                            for m, v in cold["images"].items() if v["unique"])
        print(f"{suite} forward floor: {floors[suite]:.1f} s over "
              f"{sum(v['unique'] for v in cold['images'].values())} unique images "
              f"({sum(v['forwarded'] for v in cold['images'].values())} forwarded), {threads} thread(s)", flush=True)
        if args.workers:
            floors[f"{suite} on {args.workers} processes"] = sum(
                parallel_forward_floor(cold["specs"].get(m, m), v["unique"], threads, args.device, args.workers)
                for m, v in cold["images"].items() if v["unique"])
            print(f"{suite} forward floor on {args.workers} processes: "
                  f"{floors[f'{suite} on {args.workers} processes']:.1f} s", flush=True)
    if args.new_checkpoint:
        cache = work / "checkpoint-cache"
        shutil.rmtree(cache, ignore_errors=True)
        previous = run_suite("previous-checkpoint", [args.new_checkpoint], args, cache, work)
        print(f"previous checkpoint ({args.new_checkpoint}): {previous['wall']:.1f} s (fills the cache, not tabled)")
        results["one-model checkpoint"] = run_suite("one-model-checkpoint", [args.model], args, cache, work)
        print(f"one-model checkpoint: {results['one-model checkpoint']['wall']:.1f} s", flush=True)
    decode, note = (None, "decode not measured (--no-decode)") if args.no_decode else decode_throughput(args, work)
    print(f"load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    ratios = print_tables(results, floors, decode, note)
    (work / "bench.json").write_text(json.dumps({"results": results, "floors": floors, "decode": decode,
                                                 "ratios": ratios}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
