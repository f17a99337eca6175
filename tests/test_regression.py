"""Regression gates against a baseline report: paired comparisons, verdicts, false alarms, end to end."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from clip_robustness.plugins.config import Threshold
from clip_robustness.plugins.regression import compare, paired_two_group_delta, regression_verdict, undefined_comparison
from clip_robustness.plugins.metrics import ood_auroc_score
from tests.conftest import RANDOM_MODEL


def _cls_row(logits, labels, metric="top1"):
    value = float(np.mean(logits.argmax(1) == labels))
    return {"property": "accuracy", "model": "m", "dataset": "d", "condition": "", "metric": metric,
            "value": value, "ci": None, "higher_is_better": True}


def _logits_with_accuracy(correct: np.ndarray, n_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, correct.size)
    wrong = (labels + 1 + rng.integers(0, n_classes - 1, correct.size)) % n_classes
    pred = np.where(correct, labels, wrong)
    logits = rng.normal(0, 0.1, (correct.size, n_classes))
    logits[np.arange(correct.size), pred] += 3
    return logits.astype(np.float32), labels


def _gate(base_correct, cand_correct, max_drop, seed=0):
    lb, labels = _logits_with_accuracy(base_correct)
    lc, labels_c = _logits_with_accuracy(cand_correct)
    assert np.array_equal(labels, labels_c)  # same seed: same labels
    cand_row, base_row = _cls_row(lc, labels), _cls_row(lb, labels)
    comparison = compare(cand_row, {"logits": lc, "labels": labels}, base_row, {"logits": lb, "labels": labels},
                         seed=seed)
    return comparison, regression_verdict(cand_row, comparison, Threshold("accuracy", "top1", max_drop=max_drop))


def test_identical_outputs_pass_with_zero_delta():
    correct = np.random.default_rng(1).random(500) < 0.8
    comparison, gate = _gate(correct, correct, 0.0)
    assert comparison["delta"] == 0 and comparison["p_value"] == 1.0 and gate["verdict"] == "pass"


def test_planted_drop_fails_and_small_drop_within_tolerance_passes():
    rng = np.random.default_rng(2)
    base = rng.random(1000) < 0.85
    cand = base & (rng.random(1000) > 0.10)  # ~8.5 points lost
    comparison, gate = _gate(base, cand, 0.02)
    assert comparison["delta"] == pytest.approx(cand.mean() - base.mean())
    assert gate["verdict"] == "fail" and comparison["p_value"] < 1e-6
    assert "drops by more than the tolerance 0.02" in gate["message"]
    _, lenient = _gate(base, cand, 0.2)
    assert lenient["verdict"] == "pass"


def test_a_cell_undefined_in_this_run_fails_its_max_drop_gate():
    """A metric that became undefined (value None, see Recorder) must not skip its regression gate."""
    base_row = {**_cls_row(np.eye(3), np.arange(3)), "model": "base"}
    cand_row = {**_cls_row(np.eye(3), np.arange(3)), "value": None, "extra": {"undefined": "ece is undefined with one class"}}
    comparison = undefined_comparison(cand_row, base_row)
    gate = regression_verdict(cand_row, comparison, Threshold("accuracy", "top1", max_drop=0.02))
    assert gate["verdict"] == "fail" and comparison["delta"] is None
    assert gate["message"] == ("top1 is undefined for m on d (ece is undefined with one class) while the baseline base "
                               "has 1, so its drop cannot be checked against the tolerance 0.02.")


def test_false_alarm_rate_under_the_null_is_at_most_5_percent():
    """Candidate and baseline equally accurate, predictions differing on ~6% of items in both
    directions (a re-trained or re-seeded model): at the default tolerance the gate must rarely fire."""
    rng = np.random.default_rng(3)
    fails = 0
    trials = 200
    for t in range(trials):
        base = rng.random(1000) < 0.85
        flip = rng.random(1000) < 0.06
        cand = np.where(flip, rng.random(1000) < 0.85, base)  # same accuracy in expectation
        _, gate = _gate(base, cand, 0.01, seed=t)
        fails += gate["verdict"] == "fail"
    assert fails / trials <= 0.05


def test_ood_paired_delta_matches_metric_difference():
    rng = np.random.default_rng(4)
    s_in, s_out = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    worse_in = s_in - rng.normal(0.5, 0.2, 300)
    delta, (lo, hi), p = paired_two_group_delta(ood_auroc_score, (worse_in, s_out), (s_in, s_out), n_resamples=300)
    assert delta == pytest.approx(ood_auroc_score(worse_in, s_out) - ood_auroc_score(s_in, s_out))
    assert lo <= delta <= hi < 0 and p < 0.01


def test_unpaired_fallback_uses_both_cis():
    row = {"metric": "shape_bias", "value": 0.6, "ci": [0.55, 0.65], "higher_is_better": True}
    base = {"model": "b", "metric": "shape_bias", "value": 0.7, "ci": [0.65, 0.75]}
    comparison = compare(row, None, base, None, seed=0)
    assert comparison["method"].startswith("unpaired") and comparison["delta"] == pytest.approx(-0.1)
    lo, hi = comparison["ci"]
    assert lo < -0.1 < hi and hi < 0


RECORDING = '''
import os
import numpy as np
import pytest

pytestmark = pytest.mark.accuracy

def test_top1(record):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 800)
    logits = rng.normal(0, 1, (800, 5)).astype(np.float32)
    logits[np.arange(800), labels] += float(os.environ.get("QUALITY", "3"))
    correct = logits.argmax(1) == labels
    record.proportion("top1", correct, dataset=os.environ.get("DATASET", "d"), model=os.environ.get("MODEL", "m"),
                      samples={"logits": logits, "labels": labels})
'''


def test_baseline_end_to_end(pytester, run_harness, monkeypatch):
    monkeypatch.setenv("MODEL", RANDOM_MODEL)  # rows of the run's model (a baseline of no run model is refused)
    pytester.makepyfile(test_acc=RECORDING)
    pytester.makefile(".toml", gates='[[thresholds]]\nproperty="accuracy"\nmetric="top1"\nmax_drop=0.01\n')
    run_harness("--model", RANDOM_MODEL).assert_outcomes(passed=1)
    baseline = pytester.path / "baseline.json"
    (pytester.path / "reports" / "robustness.json").rename(baseline)
    (pytester.path / "reports" / "samples").rename(pytester.path / "samples")  # keep the baseline's samples beside it

    same = run_harness("--model", RANDOM_MODEL, "--baseline", str(baseline), "--thresholds", "gates.toml")
    same.assert_outcomes(passed=1)
    row = json.loads((pytester.path / "reports" / "robustness.json").read_text())["results"][0]
    assert row["gate"]["kind"] == "regression" and row["gate"]["verdict"] == "pass" and row["gate"]["delta"] == 0

    monkeypatch.setenv("QUALITY", "1")  # a worse model on the same items
    worse = run_harness("--model", RANDOM_MODEL, "--baseline", str(baseline), "--thresholds", "gates.toml")
    assert worse.ret == 1
    worse.stdout.fnmatch_lines([f"*top1 0.9* -> 0.* (Δ=-0.*) vs baseline {RANDOM_MODEL} drops by more than the "
                                "tolerance 0.01*"])

    monkeypatch.setenv("MODEL", "renamed")
    renamed = run_harness("--model", RANDOM_MODEL, "--baseline", str(baseline), "--baseline-model",
                          f"renamed={RANDOM_MODEL}", "--thresholds", "gates.toml")
    assert renamed.ret == pytest.ExitCode.USAGE_ERROR  # 'renamed' is not a model of the run
    renamed.stderr.fnmatch_lines([f"*--baseline-model 'renamed={RANDOM_MODEL}': 'renamed' is not a model of this run*"])


def test_merging_two_shards_gives_the_rows_of_one_run(pytester, run_harness):
    from tests.test_plugin import RECORDING_TESTS
    from clip_robustness.plugins.merge import main as merge_main

    pytester.makepyfile(test_props=RECORDING_TESTS)
    run_harness("--model", RANDOM_MODEL, "--report-dir", "full").assert_outcomes(passed=4)
    run_harness("--model", RANDOM_MODEL, "--report-dir", "shard1", "-k", "ood").assert_outcomes(passed=3, deselected=1)
    run_harness("--model", RANDOM_MODEL, "--report-dir", "shard2", "-k", "not ood").assert_outcomes(passed=1,
                                                                                                  deselected=3)
    out = pytester.path / "merged"
    assert merge_main([str(pytester.path / "shard1" / "robustness.json"),
                       str(pytester.path / "shard2" / "robustness.json"), "--out", str(out)]) == 0
    full = json.loads((pytester.path / "full" / "robustness.json").read_text())["results"]
    merged = json.loads((out / "robustness.json").read_text())["results"]
    assert merged == full
    assert all((out / r["samples"]).is_file() for r in merged if r["samples"])
    assert (out / "robustness.html").is_file()


def test_merge_refuses_disagreeing_shards(tmp_path, capsys):
    from clip_robustness.plugins.merge import main as merge_main

    row = {"property": "ood", "model": "m", "dataset": "d", "condition": "", "metric": "auroc", "value": 0.9,
           "ci": None, "n": 1, "higher_is_better": True, "gate": None, "test": "t", "samples": None, "extra": {}}
    for name, value in (("a", 0.9), ("b", 0.8)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "robustness.json").write_text(json.dumps(
            {"run": {"seed": 0, "models": {}}, "results": [{**row, "value": value}]}))
    assert merge_main([str(tmp_path / "a" / "robustness.json"), str(tmp_path / "b" / "robustness.json"),
                       "--out", str(tmp_path / "out")]) == 2
    assert "the shards disagree" in capsys.readouterr().err
    assert merge_main([str(tmp_path / "a" / "robustness.json"), str(tmp_path / "nope.json")]) == 2


def test_noisy_checkpoint_of_the_default_model_fails_the_gate(pytester, run_harness, tmp_path):
    """The issue's scenario with a real model: a checkpoint with noise added to its weights really
    regressed, and must fail against its parent; an identical re-run of the parent must pass."""
    from pathlib import Path

    from safetensors.numpy import load_file, save_file

    from clip_robustness.fixtures import zoo

    entry = zoo.default_model()
    rng = np.random.default_rng(0)
    tensors = load_file(str(entry.checkpoint))
    noisy = {k: (v + rng.normal(0, 0.5 * float(v.std() or 1), v.shape).astype(v.dtype)
                 if v.dtype.kind == "f" and v.ndim > 1 else v) for k, v in tensors.items()}
    save_file(noisy, str(tmp_path / "noisy.safetensors"))

    pytester.makepyfile(test_accuracy=(Path(__file__).parents[1] / "robustness_tests" / "test_accuracy.py").read_text())
    pytester.makefile(".toml", gates='[[thresholds]]\nproperty="accuracy"\nmetric="top1"\nmax_drop=0.02\n')
    common = ("--limit", "150", "--templates", "single", "-k", "test_top1_world")
    parent = f"embedded:{entry.name}"
    run_harness("--model", parent, *common).assert_outcomes(passed=5)
    baseline = pytester.path / "base" / "robustness.json"
    (pytester.path / "reports").rename(pytester.path / "base")

    same = run_harness("--model", parent, "--baseline", str(baseline), "--thresholds", "gates.toml", *common)
    same.assert_outcomes(passed=5)
    candidate = f"{entry.arch}@{tmp_path / 'noisy.safetensors'}"
    worse = run_harness("--model", candidate, "--baseline", str(baseline), "--baseline-model", parent,
                        "--thresholds", "gates.toml", *common)
    assert worse.ret == 1
    worse.stdout.fnmatch_lines([f"*top1 * -> * vs baseline {parent} drops by more than the tolerance 0.02*"])


def test_linear_head_child_is_compared_with_parent_zero_shot_head(tmp_path):
    from clip_robustness.plugins.regression import Baseline
    from clip_robustness.plugins.rows import row_key

    base_row = {"property": "accuracy", "model": "parent", "dataset": "world:test", "condition": "templates=single",
                "metric": "top1", "value": 0.8}
    path = tmp_path / "robustness.json"
    path.write_text(json.dumps({"run": {}, "results": [base_row]}))
    baseline = Baseline.load(path, {"child": "parent"})
    row = {"property": "accuracy", "model": "child", "dataset": "world:test", "condition": "head=linear",
           "metric": "top1"}
    assert row_key(baseline.counterpart(row, templates="single")) == row_key(base_row)  # the typed row adds defaults
    assert baseline.counterpart(row, templates="openai") is None
    assert baseline.counterpart({**row, "condition": "scaling=none;templates=single"}, templates="single") is None


def _baseline_run(pytester, run_harness):
    pytester.makepyfile(test_acc=RECORDING)
    pytester.makefile(".toml", gates='[[thresholds]]\nproperty="accuracy"\nmetric="top1"\nmax_drop=0.01\n')
    run_harness("--model", RANDOM_MODEL).assert_outcomes(passed=1)
    (pytester.path / "reports").rename(pytester.path / "base")
    return pytester.path / "base" / "robustness.json"


def test_baseline_that_compares_nothing_fails_the_run(pytester, run_harness, monkeypatch):
    """Case 3: a baseline sharing no cell with the run would skip every max_drop gate without a word."""
    monkeypatch.setenv("MODEL", RANDOM_MODEL)
    baseline = _baseline_run(pytester, run_harness)
    other = "world-vit-tiny:random"
    same = run_harness("--model", RANDOM_MODEL, "--model", other, "--baseline", str(baseline),
                       "--thresholds", "gates.toml")
    assert same.ret == 0
    same.stdout.fnmatch_lines([f"robustness: WARNING: --baseline {baseline} holds no model {other} *--baseline-model*",
                               "rule gates.toml[[]0]: accuracy/top1: 0 gated, 1 compared - applied",
                               f"baseline {baseline}: 1 of 1 cells compared ({RANDOM_MODEL}: 1/1)"])

    monkeypatch.setenv("DATASET", "other")  # same model, no shared cell
    nothing = run_harness("--model", RANDOM_MODEL, "--baseline", str(baseline), "--thresholds", "gates.toml")
    assert nothing.ret == 1
    nothing.assert_outcomes(passed=1)
    nothing.stdout.fnmatch_lines([f"FAILED: --baseline {baseline} was compared with 0 of the 1 measured cells: none "
                                  "has a counterpart there *so no regression gate checked anything*"])
    gates = json.loads((pytester.path / "reports" / "robustness.json").read_text())["run"]["gates"]
    assert gates["baseline"]["models"] == {RANDOM_MODEL: {"cells": 1, "compared": 0}}

    monkeypatch.setenv("MODEL", "m")  # no run model in the baseline: refused before any test runs
    monkeypatch.delenv("DATASET")
    foreign = run_harness("--model", other, "--baseline", str(baseline))
    assert foreign.ret == pytest.ExitCode.USAGE_ERROR
    foreign.stderr.fnmatch_lines([f"*--baseline {baseline} holds models [[]{RANDOM_MODEL}]; none of this run's models "
                                  f"[[]{other}] is among them; pass --baseline-model {other}={RANDOM_MODEL}"])


def test_missing_baseline_sample_file_falls_back_to_an_unpaired_comparison(pytester, run_harness, monkeypatch):
    """Case 15: a per-sample file gone from the baseline's samples/ is a note in the comparison, not a traceback;
    a baseline without its samples/ folder at all is refused at start."""
    monkeypatch.setenv("MODEL", RANDOM_MODEL)
    baseline = _baseline_run(pytester, run_harness)
    (rel,) = [r["samples"] for r in json.loads(baseline.read_text())["results"]]
    (baseline.parent / rel).unlink()
    result = run_harness("--model", RANDOM_MODEL, "--baseline", str(baseline), "--thresholds", "gates.toml")
    result.assert_outcomes(passed=1)
    row = json.loads((pytester.path / "reports" / "robustness.json").read_text())["results"][0]
    assert row["extra"]["comparison"]["method"] == (
        f"unpaired (the baseline's per-sample file {rel} is missing or unreadable)")
    shutil.rmtree(baseline.parent / "samples")
    refused = run_harness("--model", RANDOM_MODEL, "--baseline", str(baseline))
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*its rows reference per-sample files (samples/*.npz) but * is missing; copy the "
                                  "baseline report's samples/ folder next to robustness.json"])
    assert "Traceback" not in refused.stderr.str() + result.stdout.str()


def test_a_change_without_an_interval_never_passes_its_max_drop_gate():
    """A delta with no interval (one item to resample): a point drop within the tolerance shows nothing."""
    row = {**_cls_row(np.eye(3), np.arange(3))}
    comparison = {"delta": -0.01, "ci": [float("nan"), float("nan")], "baseline_model": "base",
                  "baseline_value": 1.0, "p_value": float("nan"), "method": "paired bootstrap"}
    gate = regression_verdict(row, comparison, Threshold("accuracy", "top1", max_drop=0.05))
    assert gate["verdict"] == "inconclusive"
    assert "(Δ=-0.01, no CI) vs baseline base has no confidence interval" in gate["message"]
    assert "cannot be shown" in gate["message"] and "nan" not in gate["message"]
    worse = regression_verdict(row, {**comparison, "delta": -0.2}, Threshold("accuracy", "top1", max_drop=0.05))
    assert worse["verdict"] == "fail"


def test_a_change_that_cannot_be_computed_fails_its_max_drop_gate():
    """A NaN delta (recomputed from samples that give NaN) must never read as 'within the tolerance'."""
    row = {**_cls_row(np.eye(3), np.arange(3))}
    comparison = {"delta": float("nan"), "ci": [float("nan"), float("nan")], "baseline_model": "base",
                  "baseline_value": 1.0, "p_value": None, "method": "paired bootstrap"}
    assert regression_verdict(row, comparison, Threshold("accuracy", "top1", max_drop=0.5))["verdict"] == "fail"


# ---------------------------------------------------------- rows compared on per-item (per-scene) outcomes


def _outcomes(metric: str, rng: np.random.Generator) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(baseline arrays, candidate arrays) under the metric's recompute keys: items of varied difficulty, and a
    candidate planted worse on the same items (it loses some of the baseline's successes)."""
    if metric == "relative_top1":  # correctness under a corruption and clean, 150 images
        clean = rng.random(150) < 0.9
        corrupted = clean & (rng.random(150) < 0.7)
        worse = corrupted & (rng.random(150) > 0.2)
        return (corrupted.astype(float), clean.astype(float)), (worse.astype(float), clean.astype(float))
    if metric == "i2t_r1":  # an image's query hits or not, 100 images
        hits = rng.random(100) < 0.85
        return (hits.astype(float),), ((hits & (rng.random(100) > 0.15)).astype(float),)
    if metric == "t2i_r1":  # the share of an image's 5 captions that hit, 100 images
        hits = rng.binomial(5, rng.uniform(0.3, 1.0, 100))
        return (hits / 5,), (np.maximum(hits - (rng.random(100) < 0.5), 0) / 5,)
    if metric == "lmm_gain":  # LMM and CLIP correctness of the same items, both easier on easy items, 200 items
        easy = rng.random(200)
        lmm, clip = easy < 0.8, easy + rng.normal(0, 0.1, 200) < 0.75
        worse = lmm & (rng.random(200) > 0.15)
        return (lmm.astype(float), clip.astype(float)), (worse.astype(float), clip.astype(float))
    # multiview: per-scene hit, same-position hit and point counts of 20 scenes, recall varying by scene
    points = rng.integers(50, 100, 20).astype(float)
    hits = rng.binomial(points.astype(int), rng.uniform(0.2, 0.8, 20)).astype(float)
    same = rng.binomial(points.astype(int), 0.3).astype(float)
    worse = rng.binomial(hits.astype(int), 0.8).astype(float)
    base, cand = (hits, same, points), (worse, same, points)
    if metric == "correspondence_recall":
        return (hits, points), (worse, points)
    return base, cand


@pytest.mark.parametrize("metric", ["relative_top1", "i2t_r1", "t2i_r1", "correspondence_gain",
                                    "correspondence_recall", "lmm_gain"])
def test_outcome_rows_are_compared_paired_and_narrower_than_unpaired(metric):
    """A row that keeps the per-item (per-scene) outcomes its value is computed from (the metric's recompute) is
    compared with the baseline on the same resampled items: a candidate planted worse on the same items is flagged
    by a regression gate with max_drop 0, and the paired CI is narrower than the unpaired one on the same rows."""
    from dataclasses import replace

    from clip_robustness.fixtures.plants import recorded_cell

    base_arrays, cand_arrays = _outcomes(metric, np.random.default_rng(5))
    base, cand = (recorded_cell(metric, *arrays, seed=0) for arrays in (base_arrays, cand_arrays))
    where = {"dataset": "d", "condition": ""}
    paired = compare({**cand.row("m"), **where}, cand.samples, base.row("b"), base.samples, seed=0)
    unpaired = compare({**cand.row("m"), **where}, None, base.row("b"), None, seed=0)
    assert paired["method"] == "paired bootstrap" and unpaired["method"].startswith("unpaired")
    assert paired["delta"] == pytest.approx(unpaired["delta"]) == pytest.approx(cand.value - base.value)
    assert paired["delta"] < 0 and paired["ci"][1] < 0, paired
    width = [c["ci"][1] - c["ci"][0] for c in (paired, unpaired)]
    assert width[0] < width[1], (metric, width)
    gate = regression_verdict({**cand.row("m"), **where}, paired, Threshold("p", metric, max_drop=0.0))
    assert gate["verdict"] == "fail", gate["message"]


def test_outcome_rows_of_other_items_are_not_paired():
    """Per-item outcomes carry no labels to check: rows name their items in extra["items_digest"], and a
    baseline that measured other items (another --seed draws as many) is compared unpaired, saying why."""
    from clip_robustness.plugins.regression import items_digest

    hits = (np.random.default_rng(6).random(100) < 0.8).astype(float)
    row = {"model": "m", "metric": "i2t_r1", "value": float(hits.mean()), "ci": [0.7, 0.9], "higher_is_better": True}
    samples = {"hits": hits}
    ours, theirs = items_digest([f"world:test/{i}" for i in range(100)]), items_digest([f"x/{i}" for i in range(100)])

    def method(cand_extra, base_extra, base_samples=samples):
        return compare({**row, "extra": cand_extra}, samples, {**row, "model": "b", "extra": base_extra},
                       base_samples, seed=0)["method"]

    assert method({"items_digest": ours}, {"items_digest": ours}) == "paired bootstrap"
    assert method({}, {}) == "paired bootstrap"  # no digest on either side: the shapes are the only check
    different = "unpaired (the two runs measured different items (items_digest differs))"
    assert method({"items_digest": ours}, {"items_digest": theirs}) == different
    assert method({"items_digest": ours}, {}) == different  # one side cannot show it measured the same items
    assert method({}, {}, {"hits": hits[:90]}) == "unpaired (the per-sample arrays cover different numbers of items)"
    logits, labels = _logits_with_accuracy(np.ones(50, dtype=bool))
    other = compare(_cls_row(logits, labels), {"logits": logits, "labels": labels}, {**_cls_row(logits, labels),
                    "model": "b"}, {"logits": logits, "labels": np.roll(labels, 1)}, seed=0)
    assert other["method"] == "unpaired (the labels differ, so the items do)"


def test_expanded_confidence_matches_hesterbergs_formula_by_hand():
    """The expanded percentile level, z = sqrt(n / (n - 1)) * t(n - 1) turned back into a two-sided level,
    against t quantiles from a printed table (not scipy) and the normal CDF from math.erf; the module's doctests
    run too."""
    import doctest
    import math

    from clip_robustness.plugins import regression
    from clip_robustness.plugins.regression import expanded_confidence

    t_975 = {5: 2.570582, 15: 2.131450, 99: 1.984217}  # Student t, 0.975 quantile, by degrees of freedom
    for df, t in t_975.items():
        n = df + 1
        z = math.sqrt(n / (n - 1)) * t
        assert expanded_confidence(n) == pytest.approx(math.erf(z / math.sqrt(2)), abs=2e-6)
    assert expanded_confidence(1) == 0.95 and expanded_confidence(10**6) == pytest.approx(0.95, abs=1e-5)
    assert expanded_confidence(6) > expanded_confidence(16) > expanded_confidence(100) > 0.95  # wider with fewer items
    result = doctest.testmod(regression, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 2


# ---------------------------------------------------------- what may be paired, and how a max_drop gate decides


def _baseline_dir(tmp_path, cells, config=None):
    """A baseline report in ``tmp_path``: per (model, correct) a top1 row on world:test of 300 items with its
    per-sample file written as the report writes it (named by its arrays' digest)."""
    from clip_robustness.plugins.report import save_samples

    (tmp_path / "samples").mkdir(exist_ok=True)
    rows, arrays = [], {}
    for model, correct in cells:
        logits, labels = _logits_with_accuracy(correct)
        arrays[model] = {"logits": logits, "labels": labels}
        rel = save_samples(tmp_path, arrays[model])
        rows.append({**_cls_row(logits, labels), "model": model, "dataset": "world:test",
                     "ci": [float(correct.mean()) - 0.02, float(correct.mean()) + 0.02],
                     "n": int(correct.size), "samples": rel, "extra": {}})
    path = tmp_path / "robustness.json"
    path.write_text(json.dumps({"run": {"run_id": "20260101T000000Z-aaaaaa",
                                        "config": config or {"seed": 0, "limit": None, "data": {}}},
                                "results": rows}))
    return path, rows, arrays


RUN = {"seed": 0, "limit": None, "data": {}}  # this run's options that decide its items (a RunConfig's fields)


def test_a_baseline_sample_file_that_does_not_match_its_row_is_not_paired(tmp_path):
    """Reliability 35: rn-clip's per-sample file overwritten with another model's arrays paired the candidate with
    those (Δ=+0, pass) while the rows said 0.93 -> 0.75. A file whose arrays do not hash to its name, or do not
    give its row's value, is not paired with: the comparison is the unpaired one of the rows' values, saying why."""
    from clip_robustness.plugins.regression import Baseline, compare_with_baseline
    from clip_robustness.plugins.stats import named_arrays_digest as arrays_digest

    rng = np.random.default_rng(7)
    good, bad = rng.random(300) < 0.93, rng.random(300) < 0.75
    path, rows, arrays = _baseline_dir(tmp_path, [("base", good), ("other", bad)])
    rel, other_rel = rows[0]["samples"], rows[1]["samples"]
    shutil.copyfile(tmp_path / other_rel, tmp_path / rel)  # the 0.93 row's file now holds the 0.75 arrays
    candidate = {**rows[1], "model": "base"}  # a candidate with exactly the other model's outputs
    rule = Threshold("accuracy", "top1", max_drop=0.02)
    comparison = compare_with_baseline(candidate, arrays["other"], Baseline.load(path, {}), RUN, templates="openai",
                                       seed=0)
    stem = arrays_digest(arrays["other"])[:20]
    assert comparison["method"] == (f"unpaired (the baseline's per-sample file {rel} does not match its row: its "
                                    f"arrays hash to {stem}, not to its name {rel[8:-4]})")
    assert comparison["delta"] == pytest.approx(bad.mean() - good.mean())
    gate = regression_verdict(candidate, comparison, rule)
    assert gate["verdict"] == "fail" and "drops by more than the tolerance 0.02" in gate["message"]
    assert f"Compared unpaired (the baseline's per-sample file {rel} does not match its row" in gate["message"]

    # the row edited to name another cell's (intact) file: the name matches its arrays, the value does not
    edited = {**rows[0], "samples": other_rel}
    path.write_text(json.dumps({"run": {"config": RUN}, "results": [edited, rows[1]]}))
    comparison = compare_with_baseline(candidate, arrays["other"], Baseline.load(path, {}), RUN, templates="openai",
                                       seed=0)
    assert comparison["method"] == (f"unpaired (the baseline's per-sample file {other_rel} does not match its row: "
                                    f"its arrays give top1 {bad.mean():.4g}, the row says {good.mean():.4g})")
    # an intact file is paired
    intact = compare_with_baseline({**candidate, "model": "other"}, arrays["other"], Baseline.load(path, {}), RUN,
                                   templates="openai", seed=0)
    assert intact["method"] == "McNemar exact (p) + paired bootstrap (CI)" and intact["delta"] == 0


@pytest.mark.parametrize("config, why", [
    ({"seed": 1, "limit": None, "data": {}}, "the baseline was run with --seed 1, this run with 0, so its items differ"),
    ({"seed": 0, "limit": 50, "data": {}}, "the baseline was run with --limit 50, this run with none, so its items "
                                           "differ"),
    ({"seed": 0, "limit": None, "data": {"imagenet": "/a"}}, None),  # a set this run does not measure
])
def test_a_baseline_of_other_items_pairs_no_cell(tmp_path, config, why):
    """Reliability 36: world items drawn with another --seed (or fewer with another --limit) have the same shapes,
    and OOD, factor and shape-bias rows carry no labels or items digest to tell: they were paired item by item
    with other items. The baseline's run.config decides: no cell is paired, each comparison says why."""
    from clip_robustness.plugins.regression import Baseline, compare_with_baseline

    correct = np.random.default_rng(8).random(300) < 0.9
    path, rows, arrays = _baseline_dir(tmp_path, [("base", correct)], config)
    comparison = compare_with_baseline(rows[0], arrays["base"], Baseline.load(path, {}),
                                       {**RUN, "data": {"imagenet-r": "/b"}}, templates="openai", seed=0)
    assert comparison["method"] == (f"unpaired ({why})" if why else "McNemar exact (p) + paired bootstrap (CI)")


def test_a_baseline_cell_whose_value_is_undefined_fails_its_max_drop_gate(tmp_path):
    """Reliability 39: a baseline cell recorded as null dropped its max_drop gate without a word."""
    from clip_robustness.plugins.regression import Baseline, compare_with_baseline

    row = {"property": "calibration", "model": "m", "dataset": "world:test", "condition": "", "metric": "ece",
           "value": 0.05, "ci": [0.03, 0.07], "higher_is_better": False, "samples": None, "extra": {}}
    base = {**row, "value": None, "ci": None, "extra": {"undefined": "ece is undefined with one class"}}
    path = tmp_path / "robustness.json"
    path.write_text(json.dumps({"run": {"config": RUN}, "results": [base]}))
    comparison = compare_with_baseline(row, None, Baseline.load(path, {}), RUN, templates="openai", seed=0)
    assert comparison["delta"] is None and comparison["method"] == (
        "not compared: undefined in the baseline (ece is undefined with one class)")
    gate = regression_verdict(row, comparison, Threshold("calibration", "ece", max_drop=0.01))
    assert gate["verdict"] == "fail"
    assert gate["message"] == ("ece 0.05 for m on world:test cannot be checked against the tolerance 0.01: the "
                               "baseline m's value is undefined (ece is undefined with one class), so there is "
                               "nothing to measure its rise from.")
    both = undefined_comparison({**row, "value": None, "extra": {"undefined": "no samples"}}, base)
    assert both["method"] == ("not compared: undefined in this run (no samples) and in the baseline (ece is "
                              "undefined with one class)")
    assert regression_verdict({**row, "value": None}, both, Threshold("calibration", "ece", max_drop=0.01))[
        "verdict"] == "fail"


@pytest.mark.parametrize("ci, verdict", [
    ((-0.12, 0.08), "inconclusive"),  # QA's case: it read "stays within the tolerance"
    ((-0.019, 0.01), "pass"),
    ((-0.021, -0.019), "inconclusive"),
    ((-0.09, -0.03), "fail"),
])
def test_max_drop_is_a_non_inferiority_test_on_the_whole_ci(ci, verdict):
    """Reliability 40: a max_drop gate passes only when the whole CI of the drop is within the tolerance, as a bound
    passes only when the whole CI clears it; it fails when the whole CI is beyond it."""
    row = {**_cls_row(np.eye(3), np.arange(3)), "value": 0.9}
    comparison = {"delta": (ci[0] + ci[1]) / 2, "ci": list(ci), "baseline_model": "base", "baseline_value": 0.92,
                  "p_value": 0.3, "method": "paired bootstrap"}
    gate = regression_verdict(row, comparison, Threshold("accuracy", "top1", max_drop=0.02))
    assert gate["verdict"] == verdict, gate["message"]
    if verdict == "inconclusive":
        assert "may drop by more than the tolerance 0.02 for m on d: the CI reaches a drop of" in gate["message"]
        assert gate["message"].endswith("so the CI cannot tell.")


def test_a_lower_is_better_metric_that_rises_is_said_to_rise():
    """Reliability 40: an ECE or FPR95 that rises is worse; the sentences said it "drops"."""
    row = {"property": "ood", "model": "m", "dataset": "world:far-ood", "condition": "", "metric": "fpr95",
           "value": 0.3, "ci": None, "higher_is_better": False}
    comparison = {"delta": 0.1, "ci": [0.05, 0.15], "baseline_model": "base", "baseline_value": 0.2,
                  "p_value": 0.001, "method": "paired stratified bootstrap"}
    rule = Threshold("ood", "fpr95", max_drop=0.02)
    assert "vs baseline base rises by more than the tolerance 0.02" in regression_verdict(row, comparison, rule)["message"]
    unsure = regression_verdict(row, {**comparison, "delta": 0.01, "ci": [-0.01, 0.03]}, rule)
    assert "may rise by more than the tolerance 0.02" in unsure["message"] and "drop" not in unsure["message"]


def test_an_overwritten_sample_file_and_another_seed_end_to_end(pytester, run_harness, monkeypatch):
    """Reliability 35, 36 and 41 through the harness: the overwritten file fails the gate it passed (Δ=+0), a
    baseline of another --seed is one WARNING line at start and unpaired comparisons, run.config names the baseline."""
    import hashlib

    monkeypatch.setenv("MODEL", RANDOM_MODEL)
    baseline = _baseline_run(pytester, run_harness)
    monkeypatch.setenv("QUALITY", "1")  # a worse model's outputs
    run_harness("--model", RANDOM_MODEL, "--report-dir", "worse").assert_outcomes(passed=1)
    (rel,) = [r["samples"] for r in json.loads(baseline.read_text())["results"]]
    (worse_rel,) = [r["samples"] for r in json.loads((pytester.path / "worse" / "robustness.json").read_text())["results"]]
    shutil.copyfile(pytester.path / "worse" / worse_rel, baseline.parent / rel)
    result = run_harness("--model", RANDOM_MODEL, "--baseline", str(baseline), "--thresholds", "gates.toml")
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"*top1 0.9* -> 0.* vs baseline {RANDOM_MODEL} drops by more than the tolerance "
                                 f"0.01 * Compared unpaired (the baseline's per-sample file {rel} does not match its "
                                 "row: its arrays hash to *"])
    report = json.loads((pytester.path / "reports" / "robustness.json").read_text())
    base_run = json.loads(baseline.read_text())["run"]
    assert report["run"]["config"]["baseline_run_id"] == base_run["run_id"]
    assert report["run"]["config"]["baseline_sha256"] == hashlib.sha256(baseline.read_bytes()).hexdigest()

    monkeypatch.delenv("QUALITY")
    other_seed = run_harness("--model", RANDOM_MODEL, "--baseline", str(baseline), "--report-dir", "seed1",
                             "--seed", "1")
    other_seed.stdout.fnmatch_lines([f"robustness: WARNING: --baseline {baseline}: the baseline was run with --seed 0, "
                                     "this run with 1, so its items differ; no cell is paired with it*"])
    assert other_seed.stdout.str().count("WARNING: --baseline") == 1
    (row,) = json.loads((pytester.path / "seed1" / "robustness.json").read_text())["results"]
    assert row["extra"]["comparison"]["method"] == (
        "unpaired (the baseline was run with --seed 0, this run with 1, so its items differ)")


def test_a_template_file_whose_content_changed_under_one_name_is_not_compared(tmp_path):
    """QA: the same model against its own baseline 'dropped' 0.12 when the prompts file p.txt had been edited:
    cells named templates=p measured other prompts, and the drop was blamed on the model."""
    import hashlib
    from types import SimpleNamespace

    from clip_robustness.plugins.config import template_file_digests
    from clip_robustness.plugins.regression import Baseline, compare_with_baseline
    from clip_robustness.plugins.rows import row_key

    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of a {c}.\n")
    before = template_file_digests([str(prompts)])
    assert before == {str(prompts): hashlib.sha256(prompts.read_bytes()).hexdigest()}
    row = {**_cls_row(np.eye(3), np.arange(3)), "condition": f"templates={prompts}"}
    builtin = {**row, "condition": "templates=openai"}  # a built-in set's cells are compared as before
    def fresh_baseline() -> Baseline:  # one per run: it reads the template files once
        return Baseline(tmp_path / "b.json", {row_key(r): {**r, "value": 0.9} for r in (row, builtin)}, {"m"},
                        config={"seed": 0, "limit": None, "template_files": before})

    run = SimpleNamespace(templates=(str(prompts), "openai"), seed=0, limit=None, data={})
    assert compare_with_baseline(row, None, fresh_baseline(), run, templates=str(prompts), seed=0) is not None
    prompts.write_text("a sketch of a {c}.\n")
    baseline = fresh_baseline()
    after = template_file_digests([str(prompts)])[str(prompts)]
    assert baseline.templates_changed(run.templates) == {str(prompts): (
        f"its template file {prompts} held other templates (sha256 {before[str(prompts)][:12]}) than this run's "
        f"(sha256 {after[:12]})")}
    assert compare_with_baseline(row, None, baseline, run, templates=str(prompts), seed=0) is None
    assert compare_with_baseline(builtin, None, baseline, run, templates=str(prompts), seed=0) is not None
