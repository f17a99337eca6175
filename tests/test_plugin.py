"""The plugin as users drive it: options, record transport (serial and -n 2), gates, exit status, report files."""
from __future__ import annotations

import json

import pytest

from tests.conftest import RANDOM_MODEL

RECORDING_TESTS = '''
import numpy as np
import pytest

@pytest.mark.ood
@pytest.mark.parametrize("shift", [0.5, 1.0, 2.0])
def test_separation(record, rb_seed, shift):
    rng = np.random.default_rng(0)
    scores_in, scores_out = rng.normal(shift, 1, 300), rng.normal(0, 1, 300)
    from plugins.metrics import ood_auroc_score
    record.measure("auroc", ood_auroc_score, scores_in, scores_out, two_sample=True,
                   dataset="synthetic", condition=f"shift={shift}", model="m",
                   samples={"scores_in": scores_in, "scores_out": scores_out})

@pytest.mark.calibration
def test_plain(record):
    record("ece", 0.03, ci=(0.02, 0.04), n=100, dataset="synthetic", model="m")
'''


def _rows(pytester):
    data = json.loads((pytester.path / "reports" / "robustness.json").read_text())
    return data, data["results"]


def test_rows_reach_json_and_html(pytester, run_harness):
    pytester.makepyfile(test_props=RECORDING_TESTS)
    result = run_harness("--model", RANDOM_MODEL)
    result.assert_outcomes(passed=4)
    data, rows = _rows(pytester)
    assert {(r["property"], r["metric"], r["condition"]) for r in rows} == {
        ("ood", "auroc", "shift=0.5"), ("ood", "auroc", "shift=1.0"), ("ood", "auroc", "shift=2.0"),
        ("calibration", "ece", ""),
    }
    for row in rows:
        assert row["ci"][0] <= row["value"] <= row["ci"][1]
        assert row["test"].startswith("test_props.py::")
    auroc = [r for r in rows if r["metric"] == "auroc"]
    assert [r["value"] for r in sorted(auroc, key=lambda r: r["condition"])] == sorted(r["value"] for r in auroc)
    assert all((pytester.path / "reports" / r["samples"]).is_file() for r in auroc)
    assert data["run"]["seed"] == 0 and data["run"]["config"]["models"] == [RANDOM_MODEL]
    assert (pytester.path / "reports" / "robustness.html").is_file()
    result.stdout.fnmatch_lines(["*robustness report*", "*json: *robustness.json"])


def test_xdist_gives_the_same_rows_as_serial(pytester, run_harness):
    pytester.makepyfile(test_props=RECORDING_TESTS)
    run_harness("--model", RANDOM_MODEL).assert_outcomes(passed=4)
    _, serial = _rows(pytester)
    result = run_harness("--model", RANDOM_MODEL, "-n", "2")
    result.assert_outcomes(passed=4)
    _, parallel = _rows(pytester)
    assert serial == parallel


def test_unmeetable_bound_fails_with_a_sentence(pytester, run_harness):
    pytester.makepyfile(test_props=RECORDING_TESTS)
    pytester.makefile(".toml", gates='[[thresholds]]\nproperty = "ood"\nmetric = "auroc"\n'
                                     'condition = "shift=0.5"\nmin = 0.99\n')
    result = run_harness("--model", RANDOM_MODEL, "--thresholds", "gates.toml")
    assert result.ret == 1
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*robustness gate failed:*",
                                 "*auroc=0.6* (95% CI 0.*–0.*) is below the bound 0.99 for m on synthetic under shift=0.5.*"])
    assert "Traceback" not in result.stdout.str()
    _, rows = _rows(pytester)
    gated = [r for r in rows if r["gate"]]
    assert len(gated) == 1 and gated[0]["gate"]["verdict"] == "fail"


def test_inconclusive_warns_and_strict_fails(pytester, run_harness):
    pytester.makepyfile(test_props=RECORDING_TESTS)
    pytester.makefile(".toml", gates='[[thresholds]]\nproperty = "calibration"\nmetric = "ece"\nmax = 0.035\n')
    result = run_harness("--model", RANDOM_MODEL, "--thresholds", "gates.toml")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*InconclusiveGateWarning: ece=0.03 (95% CI 0.02–0.04) straddles the bound 0.035*"])
    strict = run_harness("--model", RANDOM_MODEL, "--thresholds", "gates.toml", "--rb-strict")
    assert strict.ret == 1
    strict.assert_outcomes(passed=3, failed=1)


def test_property_selection_by_keyword_and_marker(pytester, run_harness):
    pytester.makepyfile(test_props=RECORDING_TESTS)
    run_harness("--model", RANDOM_MODEL, "-k", "calibration").assert_outcomes(passed=1, deselected=3)
    run_harness("--model", RANDOM_MODEL, "-m", "ood").assert_outcomes(passed=3, deselected=1)


@pytest.mark.parametrize("args, message", [
    (["--model", "nosuch:spec"], "*--model 'nosuch:spec': unknown open_clip architecture 'nosuch'*"),
    (["--model", "embedded:nosuch"], "*no zoo model 'nosuch'*Available:*"),
    (["--model", "ViT-B-32"], "*--model 'ViT-B-32': no ':' or '@' found. Accepted forms:*"),
    (["--model", "RN50@/no/such/file.pt"], "*checkpoint file '/no/such/file.pt' does not exist*"),
    (["--model", "RN50:nosuchtag"], "*'RN50' has no pretrained tag 'nosuchtag'*"),
    (["--model", RANDOM_MODEL, "--data", "imagenet"], "*--data 'imagenet': expected NAME=PATH*"),
    (["--model", RANDOM_MODEL, "--data", "imagenet=/no/such"], "*--data imagenet=/no/such: path does not exist*"),
    (["--model", RANDOM_MODEL, "--limit", "0"], "*--limit 0: must be a positive number*"),
    (["--model", RANDOM_MODEL, "--device", "tpu"], "*--device 'tpu': use cpu, cuda, cuda:N or auto*"),
    (["--model", RANDOM_MODEL, "--templates", "nosuch"], "*unknown template set 'nosuch'*"),
    (["--model", RANDOM_MODEL, "--baseline", "nosuch.json"], "*--baseline nosuch.json: file not found*"),
])
def test_bad_options_exit_with_a_message_and_no_traceback(pytester, run_harness, args, message):
    pytester.makepyfile(test_props=RECORDING_TESTS)
    result = run_harness(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_malformed_thresholds_file(pytester, run_harness):
    pytester.makepyfile(test_props=RECORDING_TESTS)
    pytester.makefile(".toml", gates='[[thresholds]]\nproperty = "ood"\nmetric = "auroc"\nminimum = 0.9\n')
    result = run_harness("--model", RANDOM_MODEL, "--thresholds", "gates.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*gates.toml?0?: unknown threshold key(s) ?'minimum'?*"])


def test_unknown_metric_name_is_an_error_with_suggestion(pytester, run_harness):
    pytester.makepyfile(test_bad='''
import pytest
pytestmark = pytest.mark.ood
def test_x(record):
    record("aurocc", 0.5, dataset="d", model="m")
''')
    result = run_harness("--model", RANDOM_MODEL)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*aurocc*Did you mean*auroc*"])


def test_header_shows_effective_settings(pytester, run_harness):
    pytester.makepyfile(test_props=RECORDING_TESTS)
    result = run_harness("--model", RANDOM_MODEL, "--seed", "7", "--limit", "20", "-k", "calibration")
    result.stdout.fnmatch_lines([f"robustness: models: {RANDOM_MODEL}",
                                 "robustness: device=cpu seed=7 limit=20*", "robustness: cache=*"])


def test_real_property_modules_give_the_same_numbers_under_xdist(pytester, run_harness):
    """Accuracy and OOD on world renders with a real (random-init) open_clip model: -n 2 == serial."""
    from pathlib import Path

    suite = Path(__file__).parents[1] / "robustness_tests"
    for name in ("test_accuracy", "test_ood"):
        pytester.makepyfile(**{name: (suite / f"{name}.py").read_text()})
    args = ("--model", RANDOM_MODEL, "--limit", "30", "--templates", "single")
    run_harness(*args).assert_outcomes(passed=7, skipped=2)
    _, serial = _rows(pytester)
    run_harness(*args, "-n", "2", "--embedding-cache", "off").assert_outcomes(passed=7, skipped=2)
    _, parallel = _rows(pytester)
    assert len(serial) == 5 + 2 * 4 * 4 and serial == parallel
