"""Exports (issue 15): strict JSON with non-finite values as null and their reason, robustness.csv (one row
per cell, condition keys as columns), the report's JSON Schema, and the controller-side
``pytest_robustness_report`` hook; readers still accept reports written with NaN tokens."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from clip_robustness.plugins.export import SCHEMA_PATH, replace_non_finite, strict_report
from tests.conftest import RANDOM_MODEL

CELLS = '''
import warnings

import numpy as np
import pytest

from clip_robustness.fixtures.conditions import condition
from clip_robustness.plugins.metrics import UndefinedMetricWarning

pytestmark = pytest.mark.calibration


def degenerate(x):
    warnings.warn("ece is undefined with one class", UndefinedMetricWarning)
    return float("nan")


def test_undefined(record):
    record.measure("ece", degenerate, np.arange(10.0), dataset="synthetic", model="m")


def test_cells(record):
    record("brier", 0.2, ci=(0.1, 0.3), n=40, dataset="synthetic", model="m",
           condition=condition(**{"class": "cup=mug, large", "severity": 3}),
           samples={"logits": np.eye(3, dtype=np.float32), "labels": np.arange(3)})
    record("nll", float("inf"), dataset="synthetic", model="m", condition=condition(corruption="fog"),
           extra={"spread": float("nan"), "bounds": [1.0, float("-inf")]})
    record("brier", 0.1 + 0.2, n=7, dataset="other", model="m")
'''

HOOK = '''
import json
from pathlib import Path


def pytest_robustness_report(report, config):
    reports = Path(str(config.rootpath)) / "reports"
    with open(Path(str(config.rootpath)) / "hook.jsonl", "a") as handle:
        handle.write(json.dumps({"report": report, "files": sorted(p.name for p in reports.iterdir())}) + "\\n")
'''


def _refuse(token: str) -> float:
    raise ValueError(f"not RFC 8259 JSON: {token}")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One harness run over cells with an undefined metric, an infinite value, a NaN in extra, gates, escaped
    condition values and per-sample files (a subprocess, as the run_harness fixture runs it, shared by the
    tests of this module)."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("exports")
    (root / "test_cells.py").write_text(CELLS)
    (root / "pyproject.toml").write_text("[tool.pytest.ini_options]\naddopts = ['--strict-markers']\n")
    (root / "gates.toml").write_text('[[thresholds]]\nproperty = "calibration"\nmetric = "ece"\nmax = 0.05\n\n'
                                     '[[thresholds]]\nproperty = "calibration"\nmetric = "brier"\nmax = 0.5\n')
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider",
                             "--model", RANDOM_MODEL, "--thresholds", "gates.toml", "--embedding-cache",
                             str(root / ".emb")], cwd=root, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1, result.stdout + result.stderr  # the ece gate fails on the undefined value
    assert "Traceback" not in result.stdout
    text = (root / "reports" / "robustness.json").read_text()
    return root, text


def test_report_is_strict_json_with_the_reason_beside_each_null(run):
    root, text = run
    data = json.loads(text, parse_constant=_refuse)
    rows = {(r["metric"], r["dataset"], r["condition"]): r for r in data["results"]}
    ece = rows[("ece", "synthetic", "")]
    assert ece["value"] is None and ece["extra"]["undefined"] == "ece is undefined with one class"
    nll = rows[("nll", "synthetic", "corruption=fog")]
    assert nll["value"] is None and nll["extra"]["undefined"] == "non-finite value"
    assert nll["extra"]["spread"] is None and nll["extra"]["bounds"] == [1.0, None]
    assert nll["extra"]["non_finite"] == {"/extra/spread": "NaN", "/extra/bounds/1": "-Infinity"}
    assert "non_finite" not in ece["extra"]  # the recorder already made it null, with its reason


def test_hook_gets_the_report_as_written_once_after_the_files_are_in_place(pytester, run_harness):
    pytester.makepyfile(test_cells=CELLS)
    pytester.makeconftest(HOOK)
    result = run_harness("--model", RANDOM_MODEL, "-n", "2")
    result.assert_outcomes(passed=2)  # no gate file: the default gates have no calibration bound on "m"
    calls = [json.loads(line) for line in (pytester.path / "hook.jsonl").read_text().splitlines()]
    assert len(calls) == 1  # on the controller only, though two workers ran the tests
    assert {"robustness.json", "robustness.csv", "robustness.html", "samples"} <= set(calls[0]["files"])
    text = (pytester.path / "reports" / "robustness.json").read_text()
    assert calls[0]["report"] == json.loads(text, parse_constant=_refuse)
    assert {r["metric"] for r in calls[0]["report"]["results"]} == {"ece", "brier", "nll"}


def _csv_rows(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(root / "reports" / "robustness.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_csv_has_one_row_per_cell_with_the_condition_split_into_columns(run):
    from clip_robustness.fixtures.conditions import parse_condition

    root, text = run
    results = json.loads(text)["results"]
    header, rows = _csv_rows(root)
    assert header == ["property", "model", "dataset", "condition", "cond.class", "cond.corruption",
                      "cond.severity", "metric", "value", "ci_low", "ci_high", "n", "higher_is_better",
                      "gate_kind", "verdict", "test", "samples"]
    assert len(rows) == len(results) == 4

    def number(text: str) -> float | None:
        return None if text == "" else float(text)

    for line, row in zip(rows, results):  # the same order as the JSON, value for value
        assert {k: line[k] for k in ("property", "model", "dataset", "condition", "metric")} == \
            {k: row[k] for k in ("property", "model", "dataset", "condition", "metric")}
        assert number(line["value"]) == row["value"]
        assert [number(line["ci_low"]), number(line["ci_high"])] == (row["ci"] or [None, None])
        assert (int(line["n"]) if line["n"] else None) == row["n"]
        assert line["higher_is_better"] == str(row["higher_is_better"]).lower()
        gate = row["gate"] or {}
        assert (line["gate_kind"], line["verdict"]) == (gate.get("kind", ""), gate.get("verdict", ""))
        assert (line["test"], line["samples"]) == (row["test"], row["samples"] or "")
        parts = parse_condition(row["condition"])
        assert {k[len("cond."):]: v for k, v in line.items() if k.startswith("cond.") and v} == parts
    brier = next(line for line in rows if line["metric"] == "brier" and line["cond.class"])
    assert (brier["cond.class"], brier["cond.severity"], brier["verdict"]) == ("cup=mug, large", "3", "pass")
    assert next(line for line in rows if line["dataset"] == "other")["value"] == repr(0.1 + 0.2)  # every digit


def test_pandas_reads_the_csv_as_is(run):
    pandas = pytest.importorskip("pandas")  # pandas comes with the imagenet-x extra (CI installs it)
    root, text = run
    results = json.loads(text)["results"]
    frame = pandas.read_csv(root / "reports" / "robustness.csv")
    assert len(frame) == len(results) and frame["value"].dtype.kind == "f" and frame["higher_is_better"].dtype == bool
    for (_, line), row in zip(frame.iterrows(), results):
        assert math.isnan(line["value"]) if row["value"] is None else line["value"] == row["value"]
        assert line["higher_is_better"] == row["higher_is_better"]
    assert sorted(frame["cond.severity"].dropna()) == [3]


def test_report_validates_against_its_schema(run):
    from dataclasses import fields

    import jsonschema  # the "test" extra

    from clip_robustness.plugins.rows import Row

    root, text = run
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    data = json.loads(text)
    assert list(validator.iter_errors(data)) == []
    assert schema["$defs"]["row"]["required"] == [f.name for f in fields(Row)]  # the row's one definition
    broken = json.loads(text)
    del broken["results"][0]["metric"]
    broken["results"][1]["gate"] = {"kind": "bound", "verdict": "maybe", "message": ""}
    messages = sorted(e.message for e in validator.iter_errors(broken))
    assert any("'metric' is a required property" in m for m in messages), messages
    assert any("'maybe'" in m for m in messages), messages


def test_replace_non_finite_lists_every_replacement_by_json_pointer():
    obj = {"a": [1.0, float("nan"), {"b/c~": float("inf")}], "d": -math.inf, "e": "NaN", "f": None, "g": 2}
    clean, notes = replace_non_finite(obj)
    assert clean == {"a": [1.0, None, {"b/c~": None}], "d": None, "e": "NaN", "f": None, "g": 2}
    assert notes == {"/a/1": "NaN", "/a/2/b~1c~0": "Infinity", "/d": "-Infinity"}
    assert math.isnan(obj["a"][1])  # the input is not changed


def test_strict_report_puts_notes_on_the_row_or_the_run_and_is_idempotent():
    report = {"run": {"seed": 0, "models": {"m": {"logit_bias": float("nan")}}},
              "results": [{"metric": "ece", "value": float("nan"), "ci": [float("nan"), 1.0], "extra": {}}]}
    strict = strict_report(report)
    assert strict["run"]["non_finite"] == {"/run/models/m/logit_bias": "NaN"}
    row = strict["results"][0]
    assert row["extra"] == {"non_finite": {"/value": "NaN", "/ci/0": "NaN"}, "undefined": "non-finite value"}
    assert list(strict) == ["run", "results"] and strict_report(strict) == strict
    json.dumps(strict, allow_nan=False)


def _old_report(seed: int = 0) -> dict:
    """A report as written before strict JSON: NaN tokens in a value and a gate's CI."""
    row = {"property": "calibration", "model": "m", "dataset": "d", "condition": "", "metric": "ece",
           "value": float("nan"), "ci": None, "n": 5, "higher_is_better": False,
           "gate": {"kind": "regression", "verdict": "fail", "message": "x", "ci": [float("nan"), float("nan")]},
           "test": "t.py::test", "samples": None, "extra": {}}
    return {"run": {"seed": seed, "config": {}, "models": {"m": {"status": "measured"}}, "run_id": "r"},
            "results": [row]}


def test_readers_still_accept_reports_with_nan_tokens(tmp_path, capsys):
    from clip_robustness.plugins import render
    from clip_robustness.plugins.merge import merge_reports
    from clip_robustness.plugins.regression import Baseline

    for shard in ("a", "b"):
        (tmp_path / shard).mkdir()
        (tmp_path / shard / "robustness.json").write_text(json.dumps(_old_report(), allow_nan=True))
    old = tmp_path / "a" / "robustness.json"
    assert "NaN" in old.read_text()
    baseline = Baseline.load(old, {})
    [row] = baseline.rows.values()
    assert math.isnan(row["value"])
    assert render.main([str(old), "--out", str(tmp_path / "old.html")]) == 0, capsys.readouterr().err
    merged = merge_reports([old, tmp_path / "b" / "robustness.json"], tmp_path / "merged")
    text = (tmp_path / "merged" / "robustness.json").read_text()
    assert json.loads(text, parse_constant=_refuse) == merged
    assert merged["results"][0]["extra"]["non_finite"] == {"/value": "NaN", "/gate/ci/0": "NaN", "/gate/ci/1": "NaN"}
    with open(tmp_path / "merged" / "robustness.csv", newline="", encoding="utf-8") as handle:
        [line] = list(csv.DictReader(handle))
    assert (line["value"], line["verdict"]) == ("", "fail")
