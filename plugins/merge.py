"""Merge the reports of sharded runs into one ``robustness.json`` (+ samples) and re-render the HTML.

    python -m clip_robustness.plugins.merge shard1/robustness.json shard2/robustness.json --out reports/

Shards are runs of the same harness over different test ids (CI matrix jobs, machines, or
``pytest --model A`` and ``pytest --model B``). Rows are keyed by (property, model, dataset,
condition, metric): a cell present in two shards must hold the same value, else the merge stops
and names the cell (two shards measured the same thing differently: a seed or version mismatch).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from clip_robustness.fixtures._io import atomic_write_text
from clip_robustness.plugins.report import new_run_id, sort_rows
from clip_robustness.plugins.rows import KEY_FIELDS, ReportError, load_report, row_key


def shard_positions(keys: list[tuple[str, str]], index: int, count: int) -> set[int]:
    """Positions of the tests shard ``index`` of ``count`` runs (``--shard I/N``), from (group, node id) keys.

    Tests are sorted by group (the model's xdist group), then node id, and cut into ``count`` contiguous
    runs of near-equal size: every test lands in exactly one shard, whatever the collection order, and a
    model's tests stay on as few shards as the count allows (its load and clean embeddings are paid once
    per shard, not once per job). Every shard must be given the same selection (-k, -m, --model)."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    lo, hi = (index - 1) * len(keys) // count, index * len(keys) // count
    return set(order[lo:hi])


class MergeError(ValueError):
    """Shards that cannot be merged; the message names the file or the cell."""


def _load(path: Path) -> dict[str, Any]:
    """A shard's report as its JSON object, checked by clip_robustness.plugins.rows.load_report."""
    try:
        return load_report(path).to_json()
    except ReportError as err:
        raise MergeError(str(err)) from None


def merge_reports(paths: list[Path], out_dir: Path) -> dict[str, Any]:
    """Merge shard reports into ``out_dir`` (JSON, samples/, HTML); returns the merged report."""
    if len(paths) < 2:
        raise MergeError("give at least two shard reports to merge")
    out_dir = Path(out_dir)
    reports = [(Path(p), _load(Path(p))) for p in paths]
    _check_shards_complete(reports)
    rows: dict[tuple, dict[str, Any]] = {}
    origin: dict[tuple, Path] = {}
    for path, data in reports:
        for row in data["results"]:
            key = row_key(row)
            if key in rows and not _same_value(rows[key], row):
                raise MergeError(
                    f"cell {dict(zip(KEY_FIELDS, key))} has value {rows[key]['value']} in {origin[key]} but "
                    f"{row['value']} in {path}: the shards disagree (different seed, data or versions?)")
            rows.setdefault(key, row)
            origin.setdefault(key, path)
            if row.get("samples"):
                _copy_samples(path.parent / row["samples"], out_dir / row["samples"])
    first = reports[0][1]["run"]
    seeds = {d["run"].get("seed") for _, d in reports}
    if len(seeds) > 1:
        raise MergeError(f"shards were run with different seeds {sorted(map(str, seeds))}; merge runs of one seed")
    models: dict[str, Any] = {}
    for _, data in reports:
        for model_id, info in (data["run"].get("models") or {}).items():
            # a model one shard measured and another did not run ("not measured") is measured
            if model_id not in models or _status_rank(info) > _status_rank(models[model_id]):
                models[model_id] = info
    run = {
        **first,
        "config": {**(first.get("config") or {}), "shard": None},  # the merged report is the whole run
        "wall_time_s": sum(d["run"].get("wall_time_s") or 0 for _, d in reports),
        "cache": {k: sum((d["run"].get("cache") or {}).get(k, 0) for _, d in reports) for k in ("hits", "misses")},
        "models": dict(sorted(models.items())),
        "run_id": new_run_id(),  # the merged report is a new unit; each shard's id is under "shards"
        "problems": [p for _, d in reports for p in d["run"].get("problems") or []],
        "shards": [{"path": str(p), "run_id": d["run"].get("run_id"), "git_commit": d["run"].get("git_commit"),
                    "started_at": d["run"].get("started_at"), "rows": len(d["results"]),
                    "shard": _shard_of(d)} for p, d in reports],
    }
    from clip_robustness.plugins.export import report_text, strict_report, write_csv

    # a shard written before reports were strict JSON may hold NaN
    merged = strict_report({"run": run, "results": sort_rows(list(rows.values()))})
    atomic_write_text(out_dir / "robustness.json", report_text(merged))
    write_csv(merged, out_dir / "robustness.csv")
    from clip_robustness.plugins.html import write_html

    write_html(merged, out_dir / "robustness.html")
    return merged


def _shard_of(report: dict[str, Any]) -> tuple[int, int] | None:
    shard = (report["run"].get("config") or {}).get("shard")
    return tuple(shard) if shard else None


def _check_shards_complete(reports: list[tuple[Path, dict[str, Any]]]) -> None:
    """Reports of --shard I/N runs must cover 1..N: a missing shard's cells would be missing from the gate."""
    given = {_shard_of(d) for _, d in reports} - {None}
    for count in sorted({n for _, n in given}):
        missing = [f"{i}/{count}" for i in range(1, count + 1) if (i, count) not in given]
        if missing:
            raise MergeError(f"shard {', '.join(missing)} of the --shard I/{count} run is missing; merge the "
                             f"reports of all {count} shards (its tests would be missing from the merged report)")


def _status_rank(info: dict[str, Any]) -> int:
    status = str(info.get("status", "measured"))  # reports before run ids had measured models only
    return 2 if status == "measured" else 1 if status.startswith("failed to load") else 0


def _same_value(a: dict[str, Any], b: dict[str, Any]) -> bool:
    va, vb = a.get("value"), b.get("value")
    if va is None or vb is None:
        return va is vb
    return va == vb or (va != va and vb != vb)  # equal, or both nan


def _copy_samples(src: Path, dst: Path) -> None:
    if dst.exists():
        return  # sample files are content-addressed: same name, same content
    if not src.is_file():
        raise MergeError(f"per-sample file {src} referenced by a shard is missing; copy the shard's samples/ folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clip_robustness.plugins.merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="robustness.json of each shard")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: reports)")
    args = parser.parse_args(argv)
    try:
        merged = merge_reports(args.reports, args.out)
    except MergeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"merged {len(args.reports)} shards, {len(merged['results'])} rows -> {args.out / 'robustness.json'}, "
          f"{args.out / 'robustness.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
