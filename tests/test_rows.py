"""The typed report row and file (clip_robustness.plugins.rows): shape, checks, and the one reader."""
from __future__ import annotations

import json

import pytest

from clip_robustness.plugins.rows import KEY_FIELDS, Report, ReportError, Row, load_report, row_key

ROW = {"property": "ood", "model": "m", "dataset": "world:test", "condition": "score=mcm", "metric": "auroc",
       "value": 0.8, "ci": [0.7, 0.9], "n": 300, "higher_is_better": True,
       "gate": {"kind": "bound", "verdict": "pass", "message": "ok"}, "test": "t.py::test", "samples": None,
       "extra": {"k": 1}}


def test_row_json_round_trip_keeps_the_documented_field_order():
    row = Row.from_json(dict(ROW))
    assert list(row.to_json()) == list(ROW) and row.to_json() == ROW
    assert row_key(row) == row_key(ROW) == tuple(ROW[k] for k in KEY_FIELDS)
    assert row.validate() == []


def test_validate_says_one_sentence_per_problem_naming_file_and_row(tmp_path):
    bad = [ROW, {**ROW, "value": "high", "n": -1, "gate": {"kind": "bound", "verdict": "maybe"}}, {"metric": "x"}]
    problems = Report.problems({"run": {}, "results": bad}, "r.json")
    assert problems == [
        "r.json: results[1] (auroc) value must be a number or null; got 'high'",
        "r.json: results[1] (auroc) n must be a count of items or null; got -1",
        "r.json: results[1] (auroc) gate must be null or an object with kind in ('bound', 'regression') and "
        "verdict in ('pass', 'fail', 'inconclusive'); got {'kind': 'bound', 'verdict': 'maybe'}",
        "r.json: results[2] lacks the field 'property' (every row needs property, model, dataset, condition, "
        "metric, value); pass a robustness.json written by this harness",
    ]
    path = tmp_path / "robustness.json"
    path.write_text(json.dumps({"run": {}, "results": bad}))
    with pytest.raises(ReportError, match=r"results\[1\] \(auroc\) value must be .* \(3 more problem\(s\) in the file\)"):
        load_report(path)


@pytest.mark.parametrize("text, fragment", [
    (None, "no such file"), ("{", "not valid JSON"), ("[1]", "not a robustness.json report"),
    ('{"run": {}, "results": [{"property": "ood"}]}', "results[0] lacks the field 'model'"),
    (json.dumps({"run": {}, "results": [{**ROW, "colour": "red"}]}), "results[0] has an unknown field 'colour'"),
])
def test_load_report_refuses_a_bad_file_in_one_sentence(tmp_path, text, fragment):
    path = tmp_path / "robustness.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ReportError) as err:
        load_report(path)
    assert str(err.value).startswith(str(path)) and fragment in str(err.value) and "\n" not in str(err.value)


def test_a_row_from_an_older_report_gets_defaults(tmp_path):
    path = tmp_path / "robustness.json"
    path.write_text(json.dumps({"run": {"seed": 0}, "results": [{k: ROW[k] for k in (*KEY_FIELDS, "value")}]}))
    (row,) = load_report(path).rows
    assert (row.value, row.ci, row.gate, row.extra) == (0.8, None, None, {})


def test_the_recorder_refuses_a_malformed_row_when_it_is_recorded(tmp_path):
    from clip_robustness.plugins.recorder import Recorder

    shipped = []
    record = Recorder("t.py::test", "ood", None, 0, tmp_path, None, sink=shipped.append, gate=lambda row, s: None)
    row = record("auroc", 0.8, dataset="world:test", model="m")
    assert shipped == [row] and list(row) == list(ROW) and row["higher_is_better"] is True
    with pytest.raises(ValueError, match=r"record\(\): the row of t.py::test needs a string 'dataset'; got 3"):
        record("auroc", 0.8, dataset=3, model="m")
    assert len(shipped) == 1


def test_a_hook_that_adds_a_top_level_field_gets_the_rows_sentence(tmp_path):
    """A report-row hook (run inside ``gate``) that breaks the row's shape is named, not a TypeError."""
    from clip_robustness.plugins.recorder import Recorder

    def gate(row, samples):
        row["note"] = "from a hook"

    record = Recorder("t.py::test", "ood", None, 0, tmp_path, None, sink=lambda row: None, gate=gate)
    with pytest.raises(ValueError, match=r"after the report-row hook and the gates\) has an unknown field 'note'"):
        record("auroc", 0.8, dataset="world:test", model="m")
