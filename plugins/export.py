"""The report's machine-readable forms: strict JSON, ``robustness.csv`` and the report's JSON Schema.

``robustness.json`` is RFC 8259 JSON: Python's ``NaN``/``Infinity`` tokens are not JSON, and pandas,
jq and experiment trackers reject or mangle them. :func:`strict_report` writes every non-finite float
as ``null`` and says which it was, beside it: in a row under ``extra.non_finite`` (JSON pointers into
the row), elsewhere under ``run.non_finite`` (pointers from the document's root). A row's undefined
``value`` keeps its reason in ``extra.undefined`` (the recorder sets it; here only for reports that
still hold a NaN value). Readers (baseline, merge, re-render) use ``json.loads``, which still accepts
the NaN tokens of reports written before.

``robustness.csv`` (:func:`write_csv`) holds one row per cell, the condition split into ``cond.<key>``
columns, so ``pandas.read_csv`` gives a table to filter without parsing condition strings.
``robustness.schema.json`` (:data:`SCHEMA_PATH`, package data) describes the report file.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from clip_robustness.fixtures._io import atomic_write_text
from clip_robustness.fixtures.conditions import parse_condition

SCHEMA_PATH = Path(__file__).resolve().parent / "robustness.schema.json"
NON_FINITE_KEY = "non_finite"
UNDEFINED_VALUE = "non-finite value"  # the recorder's reason for a value that is NaN without a metric's warning
CSV_HEAD = ("property", "model", "dataset", "condition")  # then one cond.<key> column per condition key
CSV_TAIL = ("metric", "value", "ci_low", "ci_high", "n", "higher_is_better", "gate_kind", "verdict", "test",
            "samples")


def _token(x: float) -> str:
    """The token Python's json would have written for a non-finite float."""
    return "NaN" if math.isnan(x) else "Infinity" if x > 0 else "-Infinity"


def _pointer_part(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")  # RFC 6901 escaping


def replace_non_finite(obj: Any, pointer: str = "") -> tuple[Any, dict[str, str]]:
    """``obj`` (JSON-like) with every NaN/inf float replaced by None (a copy; ``obj`` is not changed), and
    ``{JSON pointer: "NaN" | "Infinity" | "-Infinity"}`` of what was replaced.

    >>> replace_non_finite({"ci": [float("nan"), 1.0], "a/b": float("-inf")})
    ({'ci': [None, 1.0], 'a/b': None}, {'/ci/0': 'NaN', '/a~1b': '-Infinity'})
    """
    notes: dict[str, str] = {}

    def walk(x: Any, at: str) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            notes[at] = _token(x)
            return None
        if isinstance(x, dict):
            return {k: walk(v, f"{at}/{_pointer_part(k)}") for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{at}/{i}") for i, v in enumerate(x)]
        return x

    return walk(obj, pointer), notes


def strict_row(row: dict[str, Any]) -> dict[str, Any]:
    """One result row without non-finite floats; what was replaced is listed in ``extra.non_finite``."""
    clean, notes = replace_non_finite(row)
    if notes:
        extra = clean["extra"] = dict(clean.get("extra") or {})
        extra[NON_FINITE_KEY] = {**(extra.get(NON_FINITE_KEY) or {}), **notes}
        if "/value" in notes:  # a value the recorder never saw (an old report): undefined, as it would say
            extra.setdefault("undefined", UNDEFINED_VALUE)
    return clean


def strict_report(report: dict[str, Any]) -> dict[str, Any]:
    """The report as written: valid RFC 8259 JSON (``json.dumps(..., allow_nan=False)`` accepts it).

    Idempotent, so a merged report of strict shards comes out unchanged."""
    rest, notes = replace_non_finite({k: v for k, v in report.items() if k != "results"})
    if notes:
        run = rest["run"] = dict(rest.get("run") or {})
        run[NON_FINITE_KEY] = {**(run.get(NON_FINITE_KEY) or {}), **notes}
    return {k: ([strict_row(r) for r in report["results"]] if k == "results" else rest[k]) for k in report}


def report_text(report: dict[str, Any]) -> str:
    """The text of ``robustness.json`` for a report already made strict (raises ValueError on a NaN left)."""
    import json

    return json.dumps(report, indent=1, allow_nan=False) + "\n"


def _csv_number(x: Any) -> str:
    return "" if x is None else repr(float(x))  # repr: the shortest text that reads back as the same float


def csv_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of ``robustness.csv``: one row per cell, in the report's order; empty text for a
    missing value (null in the JSON), a condition key the cell does not have, or a cell without a gate."""
    rows = report["results"]
    conditions = [parse_condition(r["condition"]) for r in rows]
    keys = sorted({k for parts in conditions for k in parts})
    header = [*CSV_HEAD, *(f"cond.{k}" for k in keys), *CSV_TAIL]
    table = []
    for row, parts in zip(rows, conditions):
        ci = row.get("ci") or (None, None)
        gate = row.get("gate") or {}
        table.append([
            *(str(row[k]) for k in CSV_HEAD), *(parts.get(k, "") for k in keys),
            row["metric"], _csv_number(row.get("value")), _csv_number(ci[0]), _csv_number(ci[1]),
            "" if row.get("n") is None else str(int(row["n"])),
            "" if row.get("higher_is_better") is None else str(bool(row["higher_is_better"])).lower(),
            gate.get("kind", ""), gate.get("verdict", ""), row.get("test") or "", row.get("samples") or "",
        ])
    return header, table


def write_csv(report: dict[str, Any], path: Path) -> None:
    """Write ``robustness.csv`` (RFC 4180, UTF-8) atomically."""
    header, table = csv_table(report)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(table)
    atomic_write_text(path, buffer.getvalue())
