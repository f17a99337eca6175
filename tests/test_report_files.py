"""The report as one unit (issue 13, cases 7, 8 and 15): a run id in JSON, HTML and samples; rendered in a
staging folder and swapped in; one run per report folder; failed loads and errored tests listed; a run that
measured nothing says so; an unusable report folder refused at start."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import RANDOM_MODEL

MEASURING = '''
import numpy as np
import pytest

pytestmark = pytest.mark.calibration

@pytest.mark.parametrize("k", [2, 3, 4])
def test_cell(record, k):
    record("ece", 0.03, ci=(0.02, 0.04), n=k, dataset=f"synthetic{k}", model="m",
           samples={"logits": np.eye(k, dtype=np.float32), "labels": np.arange(k)})
'''

USING_THE_MODEL = '''
import pytest

pytestmark = pytest.mark.accuracy

def test_top1(clip, record):
    record("top1", 0.5, dataset="synthetic")

def test_top1_again(clip, record):
    record("top1", 0.5, dataset="other")
'''

ERRORING = '''
import pytest

pytestmark = pytest.mark.ood

@pytest.fixture
def broken():
    raise RuntimeError("fixture <broke>")

def test_setup_error(broken, record):
    record("auroc", 0.5, dataset="d", model="m")

def test_call_failure(record):
    record("auroc", 0.9, dataset="d", model="m")
    raise ValueError("need at least one array to concatenate")

def test_gate_failure(record):
    record("auroc", 0.5, ci=(0.45, 0.55), n=100, dataset="gated", model="m")
'''

KILLED_WHILE_RENDERING = '''
import os

import clip_robustness.plugins.html


def _killed(*args, **kwargs):
    os._exit(9)  # as if the run were killed while the HTML renders


clip_robustness.plugins.html.write_html = _killed
'''


def _report(root: Path) -> tuple[dict, str]:
    out = root / "reports"
    return json.loads((out / "robustness.json").read_text()), (out / "robustness.html").read_text()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_that_measures_nothing_replaces_the_stale_report_and_lists_the_failed_load(pytester, run_harness):
    pytester.makepyfile(test_props=MEASURING)
    run_harness("--model", RANDOM_MODEL).assert_outcomes(passed=3)
    old, _ = _report(pytester.path)
    old_samples = [pytester.path / "reports" / r["samples"] for r in old["results"]]
    assert all(p.is_file() for p in old_samples)

    import torch

    torch.save({"x": torch.zeros(1)}, pytester.path / "wrong.pt")  # passes the start-up check, fails to load
    (pytester.path / "test_props.py").unlink()
    pytester.makepyfile(test_model=USING_THE_MODEL)
    result = run_harness("--model", "world-rn-tiny@wrong.pt")
    result.assert_outcomes(errors=2)
    data, html = _report(pytester.path)
    assert data["results"] == [] and data["run"]["run_id"] != old["run"]["run_id"]
    [(model_id, info)] = data["run"]["models"].items()
    assert info["status"].startswith("failed to load: ") and "does not match architecture" in info["status"]
    assert data["run"]["problems"] == [{"test": f"test_model.py::test_top1[{model_id}]", "model": model_id,
                                        "kind": "load", "message": info["status"][len("failed to load: "):],
                                        "tests": 2}]
    assert not any(p.exists() for p in old_samples)  # the old samples went with the old report
    assert "This run measured nothing." in html and f'content="{data["run"]["run_id"]}"' in html
    assert html.count("failed to load") >= 2  # the problem list and the model's column in the summary
    result.stdout.fnmatch_lines(["*this run measured nothing*",
                                 f"failed to load: {model_id} (2 tests not run): *does not match architecture*"])


SKIPPING = '''
import pytest

pytestmark = pytest.mark.ood

def test_real(record):
    pytest.skip("real data not given (--data ood:NAME=PATH)")
'''


def test_a_run_whose_every_test_skipped_is_not_a_green_gate(pytester, run_harness):
    """`-k "accuracy and real"` without --data skips every test: the report says it measured nothing, and the
    exit status is pytest's for a run with nothing to run (5), not 0, so CI does not pass an empty gate."""
    pytester.makepyfile(test_props=SKIPPING)
    result = run_harness("--model", RANDOM_MODEL)
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["*this run measured nothing: the report says so and lists why (exit status 5*"])
    assert _report(pytester.path)[0]["results"] == []
    pytester.makepyfile(test_props=MEASURING)
    assert run_harness("--model", RANDOM_MODEL).ret == pytest.ExitCode.OK


def test_errored_and_failed_tests_are_listed_but_gate_failures_are_not(pytester, run_harness):
    pytester.makepyfile(test_props=ERRORING)
    pytester.makefile(".toml", gates='[[thresholds]]\nproperty = "ood"\nmetric = "auroc"\ndataset = "gated"\n'
                                     'min = 0.9\n')
    result = run_harness("--model", RANDOM_MODEL, "--thresholds", "gates.toml")
    result.assert_outcomes(failed=2, errors=1)
    data, html = _report(pytester.path)
    assert data["run"]["problems"] == [
        {"test": "test_props.py::test_call_failure", "model": None, "kind": "fail",
         "message": "ValueError: need at least one array to concatenate"},
        {"test": "test_props.py::test_setup_error", "model": None, "kind": "error",
         "message": "RuntimeError: fixture <broke>"},
    ]
    assert data["run"]["models"][RANDOM_MODEL]["status"] == "not measured"
    assert "RuntimeError: fixture &lt;broke&gt;" in html and 'id="problems"' in html
    result.stdout.fnmatch_lines(["failed: test_props.py::test_call_failure: ValueError: need at least one array*",
                                 "error: test_props.py::test_setup_error: RuntimeError: fixture <broke>"])


def test_only_the_harness_own_tests_leave_the_report_folder_alone(pytester, run_harness):
    pytester.makepyfile(test_plain="def test_x():\n    assert True\n")
    run_harness("--model", RANDOM_MODEL).assert_outcomes(passed=1)
    assert not (pytester.path / "reports").exists()


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_second_run_into_the_same_report_folder_is_refused_at_start(pytester, run_harness, xdist):
    from filelock import FileLock

    pytester.makepyfile(test_props=MEASURING)
    run_harness("--model", RANDOM_MODEL).assert_outcomes(passed=3)
    reports = pytester.path / "reports"
    before = _files(reports)
    with FileLock(reports / ".robustness.lock"):  # another run is writing its report there
        result = run_harness("--model", RANDOM_MODEL, *xdist)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --report-dir {reports}: another run is writing its report there; "
                                 "wait for it to finish or pass another --report-dir"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert "passed" not in result.stdout.str()  # refused before any test ran
    assert _files(reports) == before


def test_a_kill_while_rendering_leaves_the_previous_report_whole(pytester, run_harness):
    pytester.makepyfile(test_props=MEASURING)
    run_harness("--model", RANDOM_MODEL).assert_outcomes(passed=3)
    reports = pytester.path / "reports"
    before = _files(reports)
    pytester.makeconftest(KILLED_WHILE_RENDERING)
    assert run_harness("--model", RANDOM_MODEL, "--seed", "1").ret == 9
    [staging] = reports.glob(".staging-*")  # the killed run's JSON and samples stayed in its staging folder
    assert (staging / "robustness.json").is_file()
    assert {k: v for k, v in _files(reports).items() if not k.startswith(".staging-")} == before

    (pytester.path / "conftest.py").unlink()
    run_harness("--model", RANDOM_MODEL, "--seed", "1").assert_outcomes(passed=3)
    data, html = _report(pytester.path)
    assert not staging.exists() and data["run"]["seed"] == 1
    assert f'<meta name="robustness-run-id" content="{data["run"]["run_id"]}">' in html
    assert (reports / "samples" / "RUN_ID").read_text().strip() == data["run"]["run_id"]


def test_samples_from_xdist_workers_land_beside_the_json(pytester, run_harness):
    pytester.makepyfile(test_props=MEASURING)
    run_harness("--model", RANDOM_MODEL, "-n", "2").assert_outcomes(passed=3)
    data, html = _report(pytester.path)
    reports = pytester.path / "reports"
    assert len(data["results"]) == 3 and all((reports / r["samples"]).is_file() for r in data["results"])
    assert sorted(p.name for p in (reports / "samples").iterdir()) == sorted(
        [Path(r["samples"]).name for r in data["results"]] + ["RUN_ID"])
    assert (reports / "samples" / "RUN_ID").read_text().strip() == data["run"]["run_id"] in html
    assert not list(reports.glob(".staging-*"))


@pytest.mark.parametrize("make, report_dir, message", [
    (lambda root: (root / "reports").write_text("x"), "reports",
     "a file is in the way of the report folder; remove it or pass another --report-dir"),
    (lambda root: (root / "reports" / "robustness.html").mkdir(parents=True), "reports",
     "robustness.html is a folder but the report writes a file there; remove it or pass another --report-dir"),
    (lambda root: (root / "reports").mkdir() or (root / "reports" / "samples").write_text("x"), "reports",
     "samples is a file but the report writes a folder there; remove it or pass another --report-dir"),
    (lambda root: (root / "blocker").write_text("x"), "blocker/reports",
     "*blocker is not a writable folder; pass a writable --report-dir"),
], ids=["file-in-place", "html-is-a-folder", "samples-is-a-file", "parent-is-a-file"])
def test_an_unusable_report_folder_is_refused_before_any_model_loads(pytester, run_harness, make, report_dir,
                                                                     message):
    pytester.makepyfile(test_model=USING_THE_MODEL)
    make(pytester.path)
    result = run_harness("--model", RANDOM_MODEL, "--report-dir", report_dir)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --report-dir {pytester.path / report_dir}: {message}"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
