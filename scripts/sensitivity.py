"""The sensitivity power table: per property, planted effects of known size x seeds, detected how often?

For every seed (the world items drawn, as ``--seed`` draws them, the plant's randomness and the comparison's
bootstrap seed) and every property of ``clip_robustness.fixtures.plants``, each planted size is compared with
the unchanged model by the harness's own regression comparison; ``--nulls`` exchangeable redraws per seed give
the false-alarm rate. Writes the table (markdown, between the markers in docs/sensitivity.md with ``--write``)
and the raw outcomes as JSON.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/sensitivity.py --seeds 10 --nulls 10 \\
        --cache /tmp/h8/emb --json /tmp/h8/sensitivity.json --write docs/sensitivity.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clip_robustness.fixtures import plants as P  # noqa: E402
from clip_robustness.plugins.stats import proportion_ci  # noqa: E402

POWER = 0.8  # a size counts as detected at this share of seeds
START, END = "<!-- power-table:start -->", "<!-- power-table:end -->"


def run(props: list[str], seeds: int, nulls: int, cache_dir: Path, log=print) -> dict:
    """Outcomes per property: for each size the per-seed deltas and detections, and the null draws."""
    import torch

    from clip_robustness.fixtures.cache import EmbeddingCache
    from clip_robustness.fixtures.lmm.adapter import load_lmm, parse_lmm_spec
    from clip_robustness.fixtures.models import load_model, parse_model_spec

    torch.set_num_threads(1)
    model = load_model(parse_model_spec(P.MODEL))
    lmm = None
    if "lmm" in props:
        lmm = load_lmm(parse_lmm_spec(P.LMM))
        lmm.clip = model
    cache = EmbeddingCache(cache_dir)
    out: dict = {p: {"sizes": {}, "null": [], "baseline": [], "expected": {}} for p in props}
    for seed in range(seeds):
        ctx = P.Context(model, cache, seed)
        for prop in props:
            start = time.perf_counter()
            study = P.build_study(prop, ctx, lmm)
            res = out[prop]
            res.update(cell=study.cell, size_name=study.size_name, sign=study.sign, metric=study.baseline.metric)
            res.setdefault("notes", []).append(study.notes)
            res["baseline"].append(study.baseline.value)
            for size in study.sizes:
                comparison = P.compare_cells(study.plant(size, P.plant_rng(prop, seed, repr(size))), study.baseline,
                                             seed=seed)
                res["method"] = comparison["method"]
                res["sizes"].setdefault(repr(size), []).append(
                    {"delta": comparison["delta"], "ci": comparison["ci"],
                     "detected": P.detected(comparison, study.sign)})
                if study.expected is not None:
                    res["expected"].setdefault(repr(size), []).append(study.expected(size))
            for draw in range(nulls):
                comparison = P.compare_cells(study.null(P.plant_rng(prop, seed, f"null/{draw}")), study.baseline,
                                             seed=seed)
                res["null"].append({"delta": comparison["delta"], "ci": comparison["ci"],
                                    "flagged": P.flagged(comparison)})
            log(f"seed {seed} {prop}: {time.perf_counter() - start:.1f} s")
    return out


def fmt(x: float) -> str:
    return f"{x:.3g}"


def table(results: dict) -> str:
    """The power table: detection rate per size, the smallest size detected at >= 80% of seeds, null false alarms."""
    lines = ["| property | compared cell (metric) | method | baseline (mean over seeds) | plant size | "
             "detected at size (share of seeds) | mean Δ (expected Δ) | smallest size detected at ≥80% | "
             "null flagged (95% CI) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for prop, res in results.items():
        sizes = list(res["sizes"])
        rates = [np.mean([o["detected"] for o in res["sizes"][s]]) for s in sizes]
        smallest = next((s for s, r in zip(sizes, rates) if r >= POWER and all(x >= POWER for x in
                         rates[sizes.index(s):])), None)
        detect = ", ".join(f"{s}: {r:.0%}" for s, r in zip(sizes, rates))
        deltas = []
        for s in sizes:
            mean = np.mean([o["delta"] for o in res["sizes"][s]])
            exp = res["expected"].get(s)
            deltas.append(f"{s}: {mean:+.3f}" + (f" ({np.mean(exp):+.3f})" if exp else ""))
        flags = [o["flagged"] for o in res["null"]]
        lo, hi = proportion_ci(np.array(flags))
        method = "unpaired (the two recorded CIs)" if res["method"].startswith("unpaired") else res["method"]
        lines.append(f"| {prop} | {res['cell']} ({res['metric']}) | {method} | {np.mean(res['baseline']):.3f} | "
                     f"{res['size_name']} | {detect} | {'; '.join(deltas)} | {smallest or 'none in the grid'} | "
                     f"{sum(flags)}/{len(flags)} ({lo:.2f}–{hi:.2f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--nulls", type=int, default=10, help="null redraws per seed")
    parser.add_argument("--properties", default=",".join(P.PROPERTIES))
    parser.add_argument("--cache", type=Path, help="embedding cache folder (required unless --from-json)")
    parser.add_argument("--json", type=Path, help="write the raw outcomes here")
    parser.add_argument("--write", type=Path, help="replace the table between the power-table markers of this file")
    parser.add_argument("--from-json", type=Path,
                        help="re-render the table of an earlier run's --json, measuring nothing")
    args = parser.parse_args(argv)
    props = [p.strip() for p in args.properties.split(",") if p.strip()]
    unknown = [p for p in props if p not in P.PROPERTIES]
    if unknown:
        parser.error(f"unknown properties {unknown}; choose among {', '.join(P.PROPERTIES)}")
    if args.cache is None and args.from_json is None:
        parser.error("give --cache FOLDER (the embedding cache to measure with), or --from-json to re-render a table")
    if args.from_json:
        earlier = json.loads(args.from_json.read_text(encoding="utf-8"))
        where, results = earlier["run"], earlier["results"]
    else:
        start = time.perf_counter()
        results = run(props, args.seeds, args.nulls, args.cache, log=lambda m: print(m, flush=True))
        wall = time.perf_counter() - start
        command = "OMP_NUM_THREADS=1 .venv/bin/python scripts/sensitivity.py " + " ".join(argv or sys.argv[1:])
        where = (f"Measured with `{command}` on {platform.machine()} ({os.cpu_count()} cores, 1 torch thread, "
                 f"python {platform.python_version()}), {args.seeds} seeds x {args.nulls} null draws, "
                 f"{wall / 60:.1f} min, {time.strftime('%Y-%m-%d')}.")
    text = table(results)
    print(where)
    print(text)
    if args.json and not args.from_json:
        args.json.write_text(json.dumps({"run": where, "results": results}, indent=1), encoding="utf-8")
    if args.write:
        doc = args.write.read_text(encoding="utf-8")
        if START not in doc or END not in doc:
            parser.error(f"{args.write} has no {START} ... {END} markers to write the table between")
        head, rest = doc.split(START, 1)
        args.write.write_text(f"{head}{START}\n{where}\n\n{text}\n{END}{rest.split(END, 1)[1]}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
