"""docs/writing-a-property.md, run as written: its files make a model team's folder, its commands run there (on a
random-weight model, ``--limit 20``), and what it says the report holds is checked against the report they
write, so the page cannot drift from the code. The page marks each block with an HTML comment before it:
``<!-- file: PATH -->`` (written to PATH), ``<!-- run: LABEL -->`` (one command a line) and
``<!-- output: NAME -->`` (what a run prints or writes)."""
from __future__ import annotations

import csv
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import RANDOM_MODEL, REPO

DOC = REPO / "docs" / "writing-a-property.md"
BLOCK = re.compile(r"<!-- (file|run|output): ([^>]+?) -->\n```[\w-]*\n(.*?)```", re.S)
PROPERTY, METRICS = "prompt_sensitivity", {"prompt_agreement", "prompt_top1_gap"}
CONDITIONS = {"templates=openai;versus=single", "templates=simple;versus=single"}
CLI = Path(sys.executable).with_name("clip-robustness")  # the console script the package installs


def blocks(kind: str) -> dict[str, str]:
    found = [(name, body) for k, name, body in BLOCK.findall(DOC.read_text(encoding="utf-8")) if k == kind]
    names = [name for name, _ in found]
    assert len(set(names)) == len(names), f"docs/writing-a-property.md: two {kind} blocks share a name: {names}"
    return dict(found)


def commands(label: str) -> list[list[str]]:
    """The block's commands, each with its model specs replaced by the test model."""
    out = []
    for line in blocks("run")[label].splitlines():
        args = shlex.split(line, comments=True)
        for i in range(1, len(args)):
            if args[i - 1] in ("--model", "--baseline-model"):
                args[i] = RANDOM_MODEL
        if args:
            out.append(args)
    return out


def expected_bound_verdict(row: dict, rules: list[dict]) -> str | None:
    """The verdict the doc's rules give a row (the last matching rule with a bound; the whole CI must clear
    it), or None when no rule bounds it: docs/writing-a-property.md section 4, computed independently."""
    rule = next((r for r in reversed(rules) if (r["property"], r["metric"]) == (row["property"], row["metric"])
                 and ("min" in r or "max" in r)), None)
    if rule is None:
        return None
    lo, hi = row["ci"]
    verdicts = []
    if "min" in rule:
        verdicts.append("pass" if lo >= rule["min"] else "fail" if hi < rule["min"] else "inconclusive")
    if "max" in rule:
        verdicts.append("pass" if hi <= rule["max"] else "fail" if lo > rule["max"] else "inconclusive")
    return min(verdicts, key=["fail", "inconclusive", "pass"].index)


def check_report(folder: Path, result: pytest.RunResult, rules: list[dict], metrics: dict) -> list[dict]:
    """The property's rows: all its cells, values recomputed from their samples by the doc's own metric
    functions, bound verdicts as the doc's rules say; the run fails exactly when a gate failed."""
    rows = json.loads((folder / "robustness.json").read_text())["results"]
    assert {(r["condition"], r["metric"]) for r in rows} == {(c, m) for c in CONDITIONS for m in METRICS}, rows
    keys = {"prompt_agreement": ("scores", "other_scores"), "prompt_top1_gap": ("scores", "other_scores", "labels")}
    for row in rows:
        assert (row["property"], row["model"], row["dataset"], row["n"]) == (PROPERTY, RANDOM_MODEL, "world:test", 20)
        with np.load(folder / row["samples"]) as samples:
            assert row["value"] == pytest.approx(metrics[row["metric"]](*(samples[k] for k in keys[row["metric"]])))
        assert row["ci"][0] <= row["value"] <= row["ci"][1]
        bound = next(g for g in (row["extra"].get("gates") or [row["gate"]]) if g["kind"] == "bound")
        assert bound["verdict"] == expected_bound_verdict(row, rules), bound
    failed = any(g["verdict"] == "fail" for r in rows for g in (r["extra"].get("gates") or [r["gate"]]))
    assert result.ret == (1 if failed else 0), result.stdout.str()
    assert "Prompt sensitivity" in (folder / "robustness.html").read_text(encoding="utf-8")
    return rows


def test_the_walkthrough_runs_as_written(pytester: pytest.Pytester, run_harness, monkeypatch) -> None:
    files = blocks("file")
    assert set(files) == {"pyproject.toml", "prompt_metrics.py", "conftest.py", "tests/test_prompt_sensitivity.py",
                          "robustness-gates.toml"}, sorted(files)
    for path, text in files.items():  # after run_harness's own pyproject.toml: the doc's replaces it
        (pytester.path / path).parent.mkdir(parents=True, exist_ok=True)
        (pytester.path / path).write_text(text, encoding="utf-8")
    rules = tomllib.loads(files["robustness-gates.toml"])["thresholds"]
    namespace: dict = {}
    exec(compile(files["prompt_metrics.py"], "prompt_metrics.py", "exec"), namespace)
    metrics = {name: namespace[name] for name in METRICS}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    quick = ("--limit", "20", "--embedding-cache", str(pytester.path / ".emb"))

    def run(args: list[str], *extra: str) -> pytest.RunResult:
        if args[0] == "pytest":
            return run_harness(*args[1:], *extra, *quick)
        assert args[0] == "clip-robustness", f"docs/writing-a-property.md runs {args[0]!r}"
        return pytester.run(CLI, "-p", "no:randomly", *args[1:], *extra, *quick, timeout=300)

    # 5. Run it: plain pytest, then clip-robustness with -m; both measure the property alone
    for args in commands("alone"):
        rows = check_report(pytester.path / "reports", run(args), rules, metrics)
        assert {r["test"].split("::")[0] for r in rows} == {"tests/test_prompt_sensitivity.py"}
    # ... and clip-robustness without -m collects the bundled suite beside the team's test (not run: minutes)
    (args,) = commands("with the suite")
    collected = run(args, "--collect-only", "-q")
    assert collected.ret == 0, collected.stdout.str()
    collected.stdout.fnmatch_lines(["*test_accuracy.py::test_top1_world*", "*test_prompt_sensitivity.py::*"])

    # 6. The CSV has the columns the doc shows, and the cells its rows name
    with open(pytester.path / "reports" / "robustness.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    doc_table = list(csv.DictReader(blocks("output")["csv"].splitlines()))
    assert list(table[0]) == list(doc_table[0]), "the doc's CSV header differs from robustness.csv's"
    cell = ("property", "dataset", "condition", "cond.templates", "cond.versus", "metric", "higher_is_better",
            "gate_kind")
    assert {tuple(r[c] for c in cell) for r in doc_table} <= {tuple(r[c] for c in cell) for r in table}

    # the baseline flow: the same model twice, so every paired comparison is exactly zero and within max_drop
    released, candidate = commands("baseline")
    check_report(pytester.path / "baseline", run(released), rules, metrics)
    result = run(candidate)
    rows = check_report(pytester.path / "reports", result, rules, metrics)
    doc_comparison = json.loads(blocks("output")["comparison"])
    max_drop = {r["metric"]: r["max_drop"] for r in rules if "max_drop" in r}
    for row in rows:
        comparison = row["extra"]["comparison"]
        assert set(comparison) == set(doc_comparison) and comparison["method"] == doc_comparison["method"]
        assert comparison["delta"] == 0.0 and comparison["ci"] == [0.0, 0.0], comparison
        regression = [g for g in row["extra"].get("gates") or [row["gate"]] if g["kind"] == "regression"]
        assert [(g["verdict"], g["max_drop"]) for g in regression] == (
            [("pass", max_drop[row["metric"]])] if row["metric"] in max_drop else [])
    summary = blocks("output")["summary"].splitlines()
    result.stdout.fnmatch_lines([line for line in summary if line.startswith("rule ")])
    assert "4 metric cells, gates:" in summary[0]
    result.stdout.fnmatch_lines(["4 metric cells, gates: *",
                                 f"baseline baseline/robustness.json: 4 of 4 cells compared ({RANDOM_MODEL}: 4/4)"])
