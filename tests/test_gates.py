"""Bound gates: verdicts by confidence interval, and the sentence a failure prints."""
from __future__ import annotations

import json
import math

import pytest

from clip_robustness.plugins.config import Threshold
from clip_robustness.plugins.gates import bound_verdict, select_threshold

ROW = {"property": "calibration", "model": "embedded:rn-clip", "dataset": "world:test",
       "condition": "templates=single", "metric": "ece"}


@pytest.mark.parametrize("value, ci, rule, verdict", [
    (0.03, (0.02, 0.04), Threshold("calibration", "ece", max=0.05), "pass"),
    (0.06, (0.055, 0.07), Threshold("calibration", "ece", max=0.05), "fail"),
    (0.045, (0.03, 0.06), Threshold("calibration", "ece", max=0.05), "inconclusive"),
    (0.055, (0.04, 0.07), Threshold("calibration", "ece", max=0.05), "inconclusive"),  # point fails, CI straddles
    (0.9, (0.88, 0.92), Threshold("calibration", "ece", min=0.85), "pass"),
    (0.8, (0.78, 0.84), Threshold("calibration", "ece", min=0.85), "fail"),
    (0.5, None, Threshold("calibration", "ece", min=0.4, max=0.6), "pass"),
    (0.7, None, Threshold("calibration", "ece", min=0.4, max=0.6), "fail"),
    (0.5, (0.3, 0.7), Threshold("calibration", "ece", min=0.2, max=0.6), "inconclusive"),
])
def test_verdicts(value, ci, rule, verdict):
    gate = bound_verdict({**ROW, "value": value, "ci": list(ci) if ci else None}, rule)
    assert gate["verdict"] == verdict and gate["kind"] == "bound"


def test_failure_sentence():
    gate = bound_verdict({**ROW, "value": 0.112, "ci": [0.1, 0.125]},
                         Threshold("calibration", "ece", max=0.08, reason="release bar"))
    assert gate["message"] == ("ece=0.112 (95% CI 0.1–0.125) exceeds the bound 0.08 for embedded:rn-clip on "
                               "world:test under templates=single. (release bar)")


def test_nan_value_fails_not_passes():
    gate = bound_verdict({**ROW, "value": math.nan, "ci": [math.nan, math.nan]}, Threshold("calibration", "ece", max=0.1))
    assert gate["verdict"] == "fail" and "undefined" in gate["message"]


def test_a_value_whose_interval_could_not_be_computed_decides_no_bound():
    """One OOD image (or --limit 1) gives AUROC 1.0 with no interval: that passed the gate before. A row without
    an interval by design (a fitted temperature has none, and no ci_note) is still judged on its value."""
    row = {**ROW, "value": 0.0, "ci": None, "n": 1,
           "extra": {"ci_note": "no confidence interval: a bootstrap needs at least 2 items per group to resample "
                                "and there is 1; give more images (or a larger --limit)"}}
    gate = bound_verdict(row, Threshold("calibration", "ece", max=0.05))
    assert gate["verdict"] == "inconclusive"
    assert gate["message"] == ("ece=0 has no confidence interval for embedded:rn-clip on world:test under "
                               "templates=single (no confidence interval: a bootstrap needs at least 2 items per group "
                               "to resample and there is 1; give more images (or a larger --limit)), so its bound "
                               "cannot be decided.")
    assert bound_verdict({**row, "value": 0.2}, Threshold("calibration", "ece", max=0.05))["verdict"] == "inconclusive"
    by_design = {**ROW, "metric": "temperature", "value": 1.4, "ci": None}
    assert bound_verdict(by_design, Threshold("calibration", "temperature", max=2.0))["verdict"] == "pass"


def test_last_matching_rule_wins():
    rules = [Threshold("calibration", "ece", max=0.05, origin="pyproject"),
             Threshold("calibration", "ece", model="embedded:*", max=0.1, origin="cli"),
             Threshold("ood", "ece", max=0.01, origin="other property"),
             Threshold("calibration", "ece", max_drop=0.01, origin="regression only")]
    assert select_threshold(rules, ROW).origin == "cli"
    assert select_threshold(rules, ROW, kind="regression").origin == "regression only"
    assert select_threshold(rules, {**ROW, "metric": "nll"}) is None


def _cell(**kw):
    return {**ROW, "dataset": "world:test", "condition": "", "gate": None, "extra": {}, **kw}


def test_rule_audit_counts_cells_and_tells_typos_from_rules_for_other_runs():
    """Case 2 (b): a rule that matched no cell although its property and model ran is 'unmatched' (a typo,
    with a suggestion); a rule of a property or model that did not run is 'not applicable'."""
    from clip_robustness.plugins.gates import audit

    rules = [Threshold("calibration", "ece", max=0.1, origin="g[0]"),
             Threshold("calibration", "ece", dataset="world:tset", max=0.1, origin="g[1]"),
             Threshold("calibration", "ece", model="embeded:*", max=0.1, origin="g[2]"),
             Threshold("ood", "auroc", min=0.9, origin="g[3]"),
             Threshold("calibration", "ece", max_drop=0.01, origin="g[4]"),
             Threshold("calibration", "e*", max=0.2, origin="g[5]"),  # last match: gates both cells
             Threshold("calibration", "ece", dataset="imagenet-r", max=0.1, origin="g[6]")]  # no --data for it
    gated = {"kind": "bound", "verdict": "pass", "rule": "g[5]"}
    rows = [_cell(gate=gated), _cell(condition="scaling=temperature", gate=gated)]
    result = audit(rules, rows, baseline=None, strict=False)
    usage = {r["origin"]: r for r in result["rules"]}
    assert (usage["g[5]"]["status"], usage["g[5]"]["matched"], usage["g[5]"]["gated"]) == ("applied", 2, 2)
    assert usage["g[0]"]["status"] == "unused" and "a later rule" in usage["g[0]"]["note"]
    assert usage["g[1]"]["status"] == "unmatched"
    assert usage["g[1]"]["note"] == ("dataset 'world:tset' matches none of the 2 calibration cells of '*' "
                                     "(did you mean 'world:test'?)")
    assert (usage["g[2]"]["status"], usage["g[2]"]["note"]) == (  # a model typo warns as a dataset typo does
        "unmatched", "model 'embeded:*' matches none of this run's models (did you mean 'embedded:*'?)")
    assert usage["g[3]"]["status"] == "not applicable" and "no 'ood' cell" in usage["g[3]"]["note"]
    assert usage["g[4]"]["status"] == "not applicable" and "needs --baseline" in usage["g[4]"]["note"]
    assert result["failures"] == [] and len(result["warnings"]) == 2
    assert "g[1] matched no cell" in result["warnings"][0] and "g[2] matched no cell" in result["warnings"][1]
    assert usage["g[6]"]["status"] == "not applicable" and usage["g[6]"]["note"] == (
        "no 'imagenet-r' cell was measured in this run")
    strict = audit(rules, rows, baseline=None, strict=True)
    assert strict["failures"] == [f"threshold rule g[{i}] matched no cell: {usage[f'g[{i}]']['note']}." for i in (1, 2)]
    selected = audit(rules, rows, baseline=None, strict=True, selection=True)  # -k may have deselected its cells
    assert selected["failures"] == [] and "a -k/-m selection is active" in selected["warnings"][0]


def test_a_near_miss_model_name_warns_unless_it_names_another_known_model():
    """QA 7: `model = "embedded:rn-clp"` in a run of embedded:rn-clip was only a 'not applicable' line with exit 0.
    A close name that names no known model is a typo (a warning, failing under --rb-strict); a close name that
    is another zoo model or a spec of a known architecture is a rule for another run (not applicable)."""
    from clip_robustness.plugins.gates import audit

    rules = [Threshold("accuracy", "top1", model="embedded:rn-clp", min=0.5, origin="t[0]"),
             Threshold("accuracy", "top1", model="embedded:rn-clip-narrow", min=0.5, origin="t[1]"),
             Threshold("accuracy", "top1", model="ViT-H-14:openai", min=0.5, origin="t[2]")]
    cell = {**ROW, "property": "accuracy", "metric": "top1", "condition": "", "gate": None, "extra": {}}
    rows = [{**cell, "model": "embedded:rn-clip", "gate": {"kind": "bound", "verdict": "pass", "rule": "x"}},
            {**cell, "model": "ViT-L-14:openai"}]
    result = audit(rules, rows, baseline=None, strict=True)
    usage = {r["origin"]: r for r in result["rules"]}
    assert (usage["t[0]"]["status"], usage["t[0]"]["note"]) == (
        "unmatched", "model 'embedded:rn-clp' matches none of this run's models (did you mean 'embedded:rn-clip'?)")
    assert result["failures"] == ["threshold rule t[0] matched no cell: model 'embedded:rn-clp' matches none of "
                                  "this run's models (did you mean 'embedded:rn-clip'?)."]
    assert usage["t[1]"]["status"] == usage["t[2]"]["status"] == "not applicable"
    assert "did you mean 'embedded:rn-clip'?" in usage["t[1]"]["note"]  # still said, but no warning
    lax = audit(rules, rows, baseline=None, strict=False)
    assert lax["warnings"] == [result["failures"][0][:-1] + " (--rb-strict fails the run on it)."]


def test_baseline_usage_per_model_and_zero_comparisons_fail():
    """Case 3: per model how many cells were compared; a baseline compared with no cell fails the run."""
    from clip_robustness.plugins.gates import audit

    compared = {"comparison": {"delta": 0.0}}
    rows = [_cell(model="a", extra=compared), _cell(model="a"), _cell(model="b")]
    result = audit([], rows, baseline="base.json", strict=False)
    assert result["baseline"]["models"] == {"a": {"cells": 2, "compared": 1}, "b": {"cells": 1, "compared": 0}}
    assert result["failures"] == [] and result["warnings"][0].startswith("b: none of its 1 cells has a counterpart")
    nothing = audit([], [_cell(model="a")], baseline="base.json", strict=False)
    assert nothing["failures"][0].startswith("--baseline base.json was compared with 0 of the 1 measured cells")


def test_rule_sources_for_the_header():
    from clip_robustness.plugins.gates import rule_sources

    rules = [Threshold("ood", "auroc", min=0.9, origin=f"pyproject.toml [tool.robustness] thresholds[{i}]")
             for i in range(2)] + [Threshold("ood", "auroc", min=0.9, origin="ci/gates.toml[0]")]
    assert rule_sources(rules) == "3 rules (2 from pyproject.toml [tool.robustness], 1 from ci/gates.toml)"
    assert rule_sources([]) == "0 rules"


def _base_cells(*datasets, model="m"):
    return {"holds": ["base-m"], "cells": [["accuracy", model, d, "", "top1"] for d in datasets]}


def test_a_max_drop_rule_whose_cells_only_the_baseline_has_is_unmatched():
    """QA (W1): a max_drop rule for a dataset only the baseline measured (the run was not given its --data) compared
    nothing, and the audit called it 'not applicable' with the run green under --rb-strict; the baseline summary
    counted this run's cells only ("10 of 10 cells compared")."""
    from clip_robustness.plugins.gates import audit, unmeasured_summary

    compared = {"comparison": {"delta": 0.0}, "gates": [{"kind": "regression", "verdict": "pass", "rule": "r[0]"}]}
    rows = [_cell(property="accuracy", metric="top1", model="m", extra=compared)]
    rules = [Threshold("accuracy", "top1", dataset="world:test", max_drop=0.02, origin="r[0]"),
             Threshold("accuracy", "top1", dataset="wx", max_drop=0.02, origin="r[1]"),
             Threshold("accuracy", "top1", dataset="imagenet-r", max_drop=0.02, origin="r[2]"),  # neither has it
             Threshold("calibration", "ece", max_drop=0.02, origin="r[3]")]
    cells = {"holds": ["m"], "cells": [["accuracy", "m", "world:test", "", "top1"], ["accuracy", "m", "wx", "a", "top1"],
                                       ["accuracy", "m", "wx", "b", "top1"], ["calibration", "m", "wx", "", "ece"]]}
    strict = audit(rules, rows, baseline="base.json", strict=True, baseline_cells=cells)
    usage = {r["origin"]: r for r in strict["rules"]}
    note = ("the baseline has 2 cells it matches (dataset 'wx') that this run did not measure, so it compared "
            "nothing; pass the same --data (and selection) as the baseline's run")
    assert (usage["r[1]"]["status"], usage["r[1]"]["note"]) == ("unmatched", note)
    assert strict["failures"] == [f"threshold rule r[1] matched no cell: {note}."]
    assert usage["r[0]"]["status"] == "applied"
    assert (usage["r[2]"]["status"], usage["r[2]"]["note"]) == ("not applicable", "no 'imagenet-r' cell was measured "
                                                                                  "in this run")
    assert (usage["r[3]"]["status"], usage["r[3]"]["note"]) == (  # a property this run did not select at all
        "not applicable", "no 'calibration' cell was measured in this run (the baseline has 1 cell it matches)")
    lax = audit(rules, rows, baseline="base.json", strict=False, baseline_cells=cells)
    assert lax["failures"] == [] and lax["warnings"] == [strict["failures"][0][:-1] + " (--rb-strict fails the run on it)."]
    base = strict["baseline"]
    assert (base["cells"], base["compared"], len(base["unmeasured"])) == (1, 1, 3)
    assert unmeasured_summary(base) == "; 3 baseline cells have no counterpart in this run: wx (2 accuracy, 1 calibration)"
    assert unmeasured_summary(audit([], rows, baseline="b", strict=False, baseline_cells=_base_cells("world:test"))[
        "baseline"]) == ""


def test_baseline_cells_are_read_from_the_baseline_under_the_run_model_ids(tmp_path):
    from clip_robustness.plugins.gates import baseline_cells

    row = {"property": "accuracy", "dataset": "wx", "condition": "", "metric": "top1", "value": 0.5}
    path = tmp_path / "robustness.json"
    path.write_text(json.dumps({"run": {}, "results": [{**row, "model": "parent"}, {**row, "model": "other"}]}))
    assert baseline_cells(path, {"child": "parent"}, ["child", "third"]) == {
        "holds": ["other", "parent"], "cells": [["accuracy", "child", "wx", "", "top1"]]}
    assert baseline_cells(tmp_path / "missing.json", {}, ["child"]) is None


def test_zero_comparisons_in_a_shard_warn_and_the_advice_fits_the_options():
    """QA (U2): a --shard job whose tests have no baseline counterpart failed (the whole run compared cells), and
    its sentence advised --baseline-model although it was given."""
    from clip_robustness.plugins.gates import audit

    rows = [_cell(model="child", property="accuracy", metric="top1", dataset="world:test")]
    cells = {"holds": ["other", "parent"], "cells": [["accuracy", "child", "wx", "", "top1"]]}
    shard = audit([], rows, baseline="b.json", strict=True, shard=(2, 2), baseline_models={"child": "parent"},
                  baseline_cells=cells)
    assert shard["failures"] == [] and shard["warnings"] == [
        "--baseline b.json was compared with none of the 1 cells of shard 2/2; that fails nothing here, as other "
        "shards may measure the cells the baseline has: the merged report's audit fails the run if no shard compared any."]
    whole = audit([], rows, baseline="b.json", strict=False, baseline_models={"child": "parent"}, baseline_cells=cells)
    assert whole["failures"] == [
        "--baseline b.json was compared with 0 of the 1 measured cells: none has a counterpart there that could be "
        "compared (the baseline holds models [other, parent]; of parent, paired by --baseline-model child=parent, 1 of its cells are "
        "not among this run's; this run's cells that could not be compared: accuracy/top1 on world:test), so no "
        "regression gate checked anything; pass a baseline measured with the same properties, --data and options as "
        "this run (the start-up warnings say what differs)."]
    assert "pass --baseline-model" not in whole["failures"][0]
    named = audit([], rows, baseline="b.json", strict=False, baseline_cells=cells)  # not given, and needed
    assert named["failures"][0].endswith("none has a counterpart there (it holds models [other, parent], not child), so "
                                         "no regression gate checked anything; pass --baseline-model "
                                         "MODEL=BASELINE_MODEL to name the baseline's model.")
    unmatched = audit([Threshold("accuracy", "top1", dataset="wx", max_drop=0.02, origin="r[0]")], rows,
                      baseline="b.json", strict=True, shard=(1, 2), baseline_models={"child": "parent"},
                      baseline_cells=cells)  # its cells may be on the other shard
    assert unmatched["failures"] == [] and unmatched["warnings"][0].startswith("threshold rule r[0] matched no cell")
    assert "this is shard 1/2" in unmatched["warnings"][0]
