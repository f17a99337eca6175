"""Merge the reports of sharded runs into one ``robustness.json`` (+ samples) and re-render the HTML.

    python -m clip_robustness.plugins.merge shard1/robustness.json shard2/robustness.json --out reports/

Shards are runs of the same harness over different test ids (CI matrix jobs, machines, or
``pytest --model A`` and ``pytest --model B``). Rows are keyed by (property, model, dataset,
condition, metric): a cell present in two shards must hold the same value, else the merge stops
and names the cell (two shards measured the same thing differently: a seed or version mismatch).

Before any row is read, the shards must be parts of one run (``_check_same_run``): the same run-level
options (limit, seed, precision, device kind, templates, threshold rules, data, baseline and, where recorded,
the baseline's run id and sha256, LMMs), the
same harness commit and package versions, the same weights for a model two shards share, and, for
``--shard I/N`` runs, the same models and N with every shard given once. Shards cut by model
(``pytest --model A`` / ``--model B``, no ``--shard``) may differ in their models only; ``--shard I/N`` runs must
also have cut the same test selection (-k, -m, file arguments: ``run.config.selection``). What legitimately
differs between the jobs of one run is not compared: report and cache folders, threads, batch size,
the thresholds file's path (its rules are compared), platform, times and run ids.

The merged run section is the whole run's: what the report session derives from rows (the rule and baseline
audit ``gates``, each model's status) is recomputed from the merged rows by the same functions, and what is
per shard (problems, cache counters, wall time) is combined over the shards. The merged audit decides what a
``--shard`` job only warns about (a rule that matched nothing, a baseline no cell was compared with): ``main``
prints its warnings and failures and exits 1 on a failure. The folder gets ``samples/RUN_ID``, as every report's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from clip_robustness.fixtures._io import atomic_write_text
from clip_robustness.plugins.report import RUN_ID_FILE, model_status, new_run_id, problem_list, sort_rows
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


def selection_record(test_ids: list[str]) -> dict[str, Any]:
    """run.config.selection: how many tests the command line selected (-k, -m, file arguments, deselection)
    before the --shard cut, and the sha256 of their sorted ids: every shard of one run records the same,
    as does an unsharded run of the same options. The report session adds whether -k/-m/a node id narrowed it."""
    ids = sorted(test_ids)
    return {"tests": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}


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
    _check_given_once([Path(p) for p in paths])
    reports = [(Path(p), _load(Path(p))) for p in paths]
    _check_same_run(reports)
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
    merged_rows = sort_rows(list(rows.values()))
    first = reports[0][1]["run"]
    config = {**(first.get("config") or {}), "shard": None}  # the merged report is the whole run
    models: dict[str, Any] = {}
    for _, data in reports:  # a model's info from every shard that listed it; its status is recomputed below
        for model_id, info in (data["run"].get("models") or {}).items():
            models.setdefault(model_id, {}).update(info)
    names = {path: _rule_names(data["run"], first) for path, data in reports}
    problems = problem_list([p for _, d in reports for p in d["run"].get("problems") or []])
    caches = [d["run"].get("cache") or {} for _, d in reports]  # hits, misses, replayed
    run = {
        **first,
        "config": config,
        "wall_time_s": sum(d["run"].get("wall_time_s") or 0 for _, d in reports),
        "cache": {k: sum(c.get(k, 0) for c in caches) for k in sorted({"hits", "misses"}.union(*caches))},
        "models": model_status(models, problems, merged_rows),
        "gates": _gate_audit(config, [_named(row, names[origin[key]]) for key, row in rows.items()],
                             _baseline_cells([data["run"] for _, data in reports])),
        "run_id": new_run_id(),  # the merged report is a new unit; each shard's id is under "shards"
        "problems": problems,
        "shards": [{"path": str(p), "run_id": d["run"].get("run_id"), "git_commit": d["run"].get("git_commit"),
                    "started_at": d["run"].get("started_at"), "rows": len(d["results"]),
                    "shard": _shard_of(d)} for p, d in reports],
    }
    from clip_robustness.plugins.export import report_text, strict_report, write_csv

    # a shard written before reports were strict JSON may hold NaN
    merged = strict_report({"run": run, "results": merged_rows})
    atomic_write_text(out_dir / "samples" / RUN_ID_FILE, run["run_id"] + "\n")  # as every report folder has
    atomic_write_text(out_dir / "robustness.json", report_text(merged))
    write_csv(merged, out_dir / "robustness.csv")
    from clip_robustness.plugins.html import write_html

    write_html(merged, out_dir / "robustness.html")
    return merged


def _gate_audit(config: dict[str, Any], rows: list[dict[str, Any]],
                baseline_cells: dict[str, Any] | None = None) -> dict[str, Any]:
    """run.gates of the merged rows, as the report session computes it for a run's rows (ReportSession.gate_audit):
    a rule's cells are spread over the shards, so no shard's audit says what it gated (nor, under --shard, fails
    on it: a rule that matched nothing or a baseline compared with nothing is decided here, for the whole run)."""
    from clip_robustness.plugins.config import Threshold
    from clip_robustness.plugins.gates import audit

    rules = [Threshold(**rule) for rule in config.get("thresholds") or []]
    return audit(rules, rows, baseline=config.get("baseline"), strict=bool(config.get("strict")),
                 selection=bool((config.get("selection") or {}).get("narrowed")),
                 baseline_models=config.get("baseline_models") or {}, baseline_cells=baseline_cells)


def _baseline_cells(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The baseline's cells of the run's models that some shard did not measure (each shard's
    ``gates.baseline.unmeasured``, named by run model ids), for the merged audit to subtract the merged rows from;
    None when a shard does not record them (a report from before, or no baseline)."""
    bases = [(run.get("gates") or {}).get("baseline") for run in runs]
    if not bases or not all(isinstance(b, dict) and "unmeasured" in b for b in bases):
        return None
    cells = sorted({tuple(c) for b in bases for c in b["unmeasured"]})
    return {"holds": sorted({m for b in bases for m in b.get("holds") or []}), "cells": [list(c) for c in cells]}


def _rule_names(run: dict[str, Any], first: dict[str, Any]) -> dict[str, str]:
    """A shard's rule origins -> the first shard's: a job given --thresholds by another path names the same
    rules (compared in order by _check_same_run) otherwise, and its rows' gates name them so."""
    mine, theirs = ((r.get("config") or {}).get("thresholds") or [] for r in (run, first))
    return {a.get("origin"): b.get("origin") for a, b in zip(mine, theirs) if a.get("origin") != b.get("origin")}


def _named(row: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """The row as the audit reads it, its gates naming the first shard's rules (the written row is unchanged)."""
    if not names:
        return row

    def named(gate: dict[str, Any]) -> dict[str, Any]:
        return {**gate, "rule": names.get(gate.get("rule"), gate.get("rule"))}

    extra = row.get("extra") or {}
    gates = {"gates": [named(g) for g in extra["gates"]]} if extra.get("gates") else {}
    return {**row, "gate": row.get("gate") and named(row["gate"]), "extra": {**extra, **gates}}


def _shard_of(report: dict[str, Any]) -> tuple[int, int] | None:
    shard = (report["run"].get("config") or {}).get("shard")
    return tuple(shard) if shard else None


def _check_given_once(paths: list[Path]) -> None:
    """The same report file twice would count one shard's tests as two shards'."""
    seen: dict[Path, Path] = {}
    for path in paths:
        try:
            key = path.resolve(strict=True)
        except OSError:
            continue  # _load names a missing file
        if key in seen:
            same = f"{path}" if str(seen[key]) == str(path) else f"{path} ({seen[key]})"
            raise MergeError(f"{same} is given twice; give each shard's report once")
        seen[key] = path


_MISSING = object()  # a setting a (pre-)report does not record: not compared


def _config(name: str) -> Any:
    return lambda run: (run.get("config") or {}).get(name, _MISSING) if "config" in run else _MISSING


def _precision(run: dict[str, Any]) -> Any:
    """--precision as it resolved: auto is fp32 off cuda (the per-model precisions are compared too)."""
    value = _config("precision")(run)
    if value == "auto" and not str(_device_kind(run)).startswith("cuda"):
        return "fp32"
    return value


def _device_kind(run: dict[str, Any]) -> Any:
    """The resolved device without its index: cuda:0 and cuda:1 measure alike, cpu and cuda do not."""
    device = run.get("device", _MISSING)
    if device is _MISSING:
        device = _config("device")(run)
    return device if device in (_MISSING, None) or device == "auto" else str(device).split(":")[0]


def _rules(run: dict[str, Any]) -> Any:
    """The gate rules (defaults, pyproject, --thresholds), without their origin (the file's path)."""
    rules = _config("thresholds")(run)
    if not isinstance(rules, list):
        return rules
    return [{k: v for k, v in sorted(r.items()) if k != "origin"} if isinstance(r, dict) else r for r in rules]


def _data(run: dict[str, Any]) -> Any:
    """--data NAME=PATH as given (an imagefolder's with its ;classnames= / ;templates= files); no digest is recorded."""
    data, options = _config("data")(run), _config("data_options")(run)
    if data is _MISSING and options is _MISSING:
        return _MISSING
    data, options = data or {}, options or {}
    return [";".join([f"{name}={data.get(name)}", *(f"{k}={v}" for k, v in sorted((options.get(name) or {}).items()))])
            for name in sorted({*data, *options})]


def _baseline(run: dict[str, Any]) -> Any:
    base, names = _config("baseline")(run), _config("baseline_models")(run)
    if base is _MISSING and names is _MISSING:
        return _MISSING
    return [*([] if base in (None, _MISSING) else [str(base)]), *(f"{k}={v}" for k, v in sorted((names or {}).items()))]


def _models(run: dict[str, Any]) -> Any:
    specs = _config("models")(run)
    return sorted(map(str, specs)) if isinstance(specs, list) else specs


def _selection(run: dict[str, Any]) -> Any:
    """The tests selected before the --shard cut (selection_record); reports before it do not record it."""
    selection = _config("selection")(run)
    return {k: selection[k] for k in ("tests", "sha256")} if isinstance(selection, dict) else _MISSING


def _show_selection(selection: dict[str, Any]) -> str:
    count = selection["tests"]
    return f"{count} test{'s' * (count != 1)} (sha256 {selection['sha256'][:12]})"


def _shard_count(run: dict[str, Any]) -> Any:
    shard = _config("shard")(run)
    return shard if shard in (_MISSING, None) else shard[1]


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return " ".join(map(str, value)) if any("," in str(v) for v in value) else ",".join(map(str, value)) or "none"
    if isinstance(value, (str, int, float)):
        return str(value)
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else f"sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _show_rules(rules: Any) -> str:
    if not isinstance(rules, list):
        return _show(rules)
    digest = hashlib.sha256(json.dumps(rules, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{len(rules)} rules (sha256 {digest})"


def _show_digest(value: Any) -> str:
    return f"sha256 {value[:12]}" if isinstance(value, str) and len(value) > 12 else _show(value)


# (what the sentence names, how a shard's run section gives it, how a value is shown, how to fix it)
_SAME_OPTIONS = "re-run every shard with the same options"
_SAME_BASELINE = "re-run every shard against the same baseline report (the file under that path changed between jobs)"
_RUN_SETTINGS: list[tuple[str, Any, Any, str]] = [
    ("the shard count N of --shard I/N", _shard_count, _show,
     "merge the reports of all shards of one --shard I/N run"),
    ("--seed", lambda run: run.get("seed", _MISSING), _show, _SAME_OPTIONS),
    ("--limit", _config("limit"), _show, _SAME_OPTIONS),
    ("the device kind (--device)", _device_kind, _show, _SAME_OPTIONS),
    ("--precision", _precision, _show, _SAME_OPTIONS),
    ("--templates", _config("templates"), _show, _SAME_OPTIONS),
    ("the --templates files' contents", _config("template_files"), _show, _SAME_OPTIONS),
    ("--thresholds (the gate rules)", _rules, _show_rules, _SAME_OPTIONS),
    ("--data", _data, _show, _SAME_OPTIONS),
    ("--baseline / --baseline-model", _baseline, _show, _SAME_OPTIONS),
    # the baseline file's contents under one path (recorded by reports that have a baseline; older ones are not compared)
    ("the baseline's run id (run.config.baseline_run_id)", _config("baseline_run_id"), _show, _SAME_BASELINE),
    ("the baseline's contents (run.config.baseline_sha256)", _config("baseline_sha256"), _show_digest, _SAME_BASELINE),
    ("--lmm", _config("lmms"), _show, _SAME_OPTIONS),
    ("the harness's git commit", lambda run: run.get("git_commit", _MISSING), _show,
     "re-run every shard from the same commit"),
]
# what a model two shards share must agree on (its run.models entry), compared where both record it; the
# spec is not (a checkpoint path may differ between machines): the weights' sha256 is
_MODEL_FIELDS = ("arch", "sha256", "head", "precision", "preprocess")


def _differs(values: list[tuple[Path, Any]]) -> bool:
    return len({json.dumps(v, sort_keys=True, default=str) for _, v in values}) > 1


def _differ(what: str, values: list[tuple[Path, Any]], show: Any = _show, fix: str = _SAME_OPTIONS) -> MergeError:
    """One sentence: the setting, each value with the shards that hold it, and the fix."""
    groups: dict[str, list[str]] = {}
    for path, value in values:
        groups.setdefault(json.dumps(value, sort_keys=True, default=str), []).append(str(path))
    shown = {key: show(json.loads(key)) for key in groups}
    listed = ", ".join(f"{shown[key]} in {' and '.join(where)}" for key, where in groups.items())
    return MergeError(f"shards differ in {what}: {listed}; {fix}")


def _check_same_run(reports: list[tuple[Path, dict[str, Any]]]) -> None:
    """Shards must be parts of one run: the merged report records one run section for all its rows."""
    runs = [(path, data.get("run") or {}) for path, data in reports]
    for what, read, show, fix in _RUN_SETTINGS:
        values = [(p, v) for p, v in ((p, read(run)) for p, run in runs) if v is not _MISSING]  # older reports
        if _differs(values):
            raise _differ(what, values, show, fix)
    seen: dict[tuple[int, int], Path] = {}
    for path, data in reports:
        shard = _shard_of(data)
        if shard in seen:
            raise MergeError(f"shard {shard[0]}/{shard[1]} is given twice (in {seen[shard]} and {path}); "
                             "give each shard's report once")
        if shard is not None:
            seen[shard] = path
    if seen:  # the shards of --shard I/N cut one selection of the same models; shards cut by --model differ
        values = [(p, v) for p, v in ((p, _models(run)) for p, run in runs) if v is not _MISSING]
        if _differs(values):
            raise _differ("--model", values)
        values = [(p, v) for p, v in ((p, _selection(run)) for p, run in runs) if v is not _MISSING]
        if _differs(values):
            raise _differ("the test selection (-k, -m, file arguments)", values, _show_selection)
    versions = [(path, run["versions"]) for path, run in runs if isinstance(run.get("versions"), dict)]
    for package in sorted({k for _, v in versions for k in v}):
        values = [(p, v.get(package)) for p, v in versions]
        if _differs(values):
            raise _differ(f"the version of {package}", values, fix="re-run every shard in the same environment")
    for model_id in sorted({m for _, run in runs for m in (run.get("models") or {})}):
        infos = [(p, (run.get("models") or {}).get(model_id)) for p, run in runs]
        for field in _MODEL_FIELDS:
            values = [(p, i[field]) for p, i in infos if isinstance(i, dict) and i.get(field) is not None]
            if _differs(values):
                raise _differ(f"the {'weights (sha256)' if field == 'sha256' else field} of model {model_id}",
                              values, fix="re-run every shard with the same model and weights")


def _check_shards_complete(reports: list[tuple[Path, dict[str, Any]]]) -> None:
    """Reports of --shard I/N runs must cover 1..N: a missing shard's cells would be missing from the gate."""
    given = {_shard_of(d) for _, d in reports} - {None}
    for count in sorted({n for _, n in given}):
        missing = [f"{i}/{count}" for i in range(1, count + 1) if (i, count) not in given]
        if missing:
            raise MergeError(f"shard {', '.join(missing)} of the --shard I/{count} run is missing; merge the "
                             f"reports of all {count} shards (its tests would be missing from the merged report)")


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
    # the whole run's gate audit: what no shard could decide alone (a --shard job does not fail on it)
    gates = merged["run"]["gates"]
    for line in gates["warnings"]:
        print(f"WARNING: {line}")
    for line in gates["failures"]:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if gates["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
