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
    from clip_robustness.plugins.metrics import ood_auroc_score
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
    (["--model", RANDOM_MODEL, "--seed", "-1"], "*--seed -1: must be an integer from 0 to 2[*][*]32-1*"),
    # CUDA_VISIBLE_DEVICES="" (set below) hides any GPU, so this holds on every machine
    (["--model", RANDOM_MODEL, "--device", "cuda"], "*--device cuda: CUDA is not available on this machine*"),
    (["--model", RANDOM_MODEL, "--templates", "nosuch"], "*unknown template set 'nosuch'*"),
    (["--model", RANDOM_MODEL, "--baseline", "nosuch.json"], "*--baseline nosuch.json: file not found*"),
])
def test_bad_options_exit_with_a_message_and_no_traceback(pytester, run_harness, monkeypatch, args, message):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
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


def same_numbers(serial: list[dict], serial_dir, parallel: list[dict], parallel_dir) -> None:
    """What "-n N gives the same numbers as a serial run" means (docs/architecture.md): the same rows
    with values and CIs equal (to 1e-6 relative), and per-sample arrays equal within float32 noise
    (``SAMPLES_TOLERANCE``): torch's CPU kernels sum in an order that depends on the thread count, so
    the arrays, and the per-sample file names that hash their bytes, need not be bitwise equal."""
    import numpy as np

    from clip_robustness.plugins.report import SAMPLES_TOLERANCE, load_samples

    assert len(serial) == len(parallel)
    for a, b in zip(serial, parallel):
        rest = ("value", "ci", "samples")
        assert {k: v for k, v in a.items() if k not in rest} == {k: v for k, v in b.items() if k not in rest}
        numbers = [b["value"], *(b["ci"] or [])]
        assert [a["value"], *(a["ci"] or [])] == pytest.approx(numbers, rel=1e-6, nan_ok=True), a["test"]
        assert bool(a["samples"]) == bool(b["samples"])
        if a["samples"]:
            mine, theirs = load_samples(serial_dir, a["samples"]), load_samples(parallel_dir, b["samples"])
            assert mine.keys() == theirs.keys()
            for key in mine:
                np.testing.assert_allclose(mine[key], theirs[key], **SAMPLES_TOLERANCE, err_msg=f"{a['test']} {key}")


def test_real_property_modules_give_the_same_numbers_under_xdist(pytester, run_harness, monkeypatch):
    """Accuracy and OOD on world renders with a real (random-init) open_clip model: -n 2 == serial, with
    torch's default threads (a serial run uses every core, each of 2 workers half of them)."""
    import shutil
    from pathlib import Path

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    suite = Path(__file__).parents[1] / "robustness_tests"
    for name in ("test_accuracy", "test_ood"):
        pytester.makepyfile(**{name: (suite / f"{name}.py").read_text()})
    args = ("--model", RANDOM_MODEL, "--limit", "30", "--templates", "single")
    run_harness(*args).assert_outcomes(passed=7, skipped=2)
    _, serial = _rows(pytester)
    shutil.copytree(pytester.path / "reports", pytester.path / "serial")
    run_harness(*args, "-n", "2", "--embedding-cache", "off").assert_outcomes(passed=7, skipped=2)
    _, parallel = _rows(pytester)
    assert len(serial) == 5 + 2 * 4 * 4
    same_numbers(serial, pytester.path / "serial", parallel, pytester.path / "reports")


def test_warnings_fail_the_harness_own_tests_but_never_a_measurement(pytester, monkeypatch):
    """The repository's pytest settings: a library warning inside a property test is reported, not a
    failure; the same warning inside tests/ is an error (the suite stays warning-free)."""
    from tests.conftest import REPO

    pytester.makepyprojecttoml((REPO / "pyproject.toml").read_text())
    pytester.mkdir("tests").joinpath("conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    body = "import warnings\n\ndef test_w():\n    warnings.warn(UserWarning('a library warned'))\n"
    pytester.path.joinpath("tests", "test_own.py").write_text(body)
    pytester.mkdir("robustness_tests").joinpath("test_measure.py").write_text(body)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    result = pytester.runpytest_subprocess("-p", "no:randomly", "tests", "robustness_tests")
    result.assert_outcomes(passed=1, failed=1, warnings=1)
    result.stdout.fnmatch_lines(["FAILED tests/test_own.py::test_w - UserWarning: a library warned"])


def test_temperature_on_its_bound_is_recorded_not_raised(pytester, run_harness):
    """A near-chance model (random init; its first 4 world:val items are all wrong, so the NLL keeps
    falling as T grows): the optimum lies beyond the temperature search range. The rows say so and the
    report shows it; no warning is raised (so none can fail the run)."""
    from pathlib import Path

    suite = Path(__file__).parents[1] / "robustness_tests"
    pytester.makepyfile(test_calibration=(suite / "test_calibration.py").read_text())
    result = run_harness("--model", RANDOM_MODEL, "--limit", "4", "--templates", "single", "-k", "world and random-test",
                         "-W", "error::UserWarning")
    result.assert_outcomes(passed=1, deselected=5)
    _, rows = _rows(pytester)
    temperature = next(r for r in rows if r["metric"] == "temperature")
    assert temperature["extra"]["temperature_at_bound"] is True
    assert temperature["extra"]["temperature_bounds"] == [0.01, 100.0]
    assert temperature["value"] == pytest.approx(100.0, rel=1e-2)
    scaled = [r for r in rows if "scaling=temperature" in r["condition"]]
    assert scaled and all(r["extra"]["temperature_at_bound"] for r in scaled)
    html = (pytester.path / "reports" / "robustness.html").read_text()
    assert "lies on its search bound" in html


RULES = '''
[[thresholds]]
property = "ood"
metric = "auroc"
condition = "shift=0.5"
min = 0.5

[[thresholds]]
property = "ood"
metric = "auroc"
dataset = "synthetc"
min = 0.5

[[thresholds]]
property = "accuracy"
metric = "top1"
min = 0.5
'''


def test_rule_that_matches_nothing_is_reported_and_fails_under_strict(pytester, run_harness):
    """Case 2: a rule with a typo in a glob used to be silently never applied."""
    pytester.makepyfile(test_props=RECORDING_TESTS)
    pytester.makefile(".toml", gates=RULES)
    typo = ("threshold rule gates.toml[[]1] matched no cell: dataset 'synthetc' matches none of the 3 ood cells of "
            "'[*]' (did you mean 'synthetic'?)")  # a glob pattern for fnmatch_lines: [[] is a literal [
    result = run_harness("--model", RANDOM_MODEL, "--thresholds", "gates.toml")
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "robustness: thresholds: 12 rules (9 from the package defaults, 3 from gates.toml)",
        "rule gates.toml[[]0]: ood/auroc [[]condition=shift=0.5]: 1 gated, 0 compared - applied",
        "rule gates.toml[[]1]: ood/auroc [[]dataset=synthetc]: 0 gated, 0 compared - unmatched: dataset 'synthetc'*",
        "rule gates.toml[[]2]: accuracy/top1: 0 gated, 0 compared - not applicable: no 'accuracy' cell was measured*",
        f"WARNING: {typo} (--rb-strict fails the run on it)."])
    gates = _rows(pytester)[0]["run"]["gates"]
    assert [(r["origin"], r["status"], r["gated"]) for r in gates["rules"] if "defaults" not in r["origin"]] == [
        ("gates.toml[0]", "applied", 1), ("gates.toml[1]", "unmatched", 0), ("gates.toml[2]", "not applicable", 0)]
    html = (pytester.path / "reports" / "robustness.html").read_text()
    assert "Gate rules" in html and "(did you mean &#39;synthetic&#39;?)" in html

    strict = run_harness("--model", RANDOM_MODEL, "--thresholds", "gates.toml", "--rb-strict")
    assert strict.ret == 1
    strict.assert_outcomes(passed=4)
    strict.stdout.fnmatch_lines([f"FAILED: {typo}."])
    # the ood rules do not apply when ood is deselected: not a failure
    run_harness("--model", RANDOM_MODEL, "--thresholds", "gates.toml", "--rb-strict", "-k", "calibration").assert_outcomes(
        passed=1, deselected=3)

    pytester.makefile(".toml", gates=RULES.replace('"top1"', '"top_1"'))
    bad = run_harness("--model", RANDOM_MODEL, "--thresholds", "gates.toml")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*gates.toml[[]2]: metric 'top_1' matches no known metric; did you mean 'top1'[?]"])


def test_calibration_of_a_subset_whose_classes_the_id_half_lacks(pytester, run_harness):
    """ImageNet-R/-A are scored over their own classes, so their T is fitted on the ImageNet calibration
    half cut to those classes: a subset sharing a class gets its rows; one sharing none gets one sentence
    (it was `ValueError: need at least one array to concatenate`)."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def folder(root: str, classes: dict[str, int]) -> Path:
        for wnid, count in classes.items():
            (pytester.path / root / wnid).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    pytester.path / root / wnid / f"{i}.png")
        return pytester.path / root

    tench, goldfish, shark, robin = "n01440764", "n01443537", "n01484850", "n01558993"  # R: goldfish, shark; A: robin
    val = folder("val", {tench: 8, goldfish: 8})
    subset_r = folder("r", {goldfish: 2, shark: 2})  # shares goldfish with val
    subset_a = folder("a", {robin: 3})  # none of A's 200 classes is in val
    suite = Path(__file__).parents[1] / "robustness_tests"
    pytester.makepyfile(test_calibration=(suite / "test_calibration.py").read_text())
    result = run_harness("--model", RANDOM_MODEL, "--templates", "single", "-k", "real", f"--data=imagenet={val}",
                         f"--data=imagenet-r={subset_r}", f"--data=imagenet-a={subset_a}")
    result.assert_outcomes(passed=2, failed=1, deselected=5)
    result.stdout.fnmatch_lines([
        "*calibration on imagenet-a: the calibration half of --data imagenet holds no image of its 200 class(es), so no "
        "temperature can be fitted for its head; give --data imagenet a folder that holds those classes*"])
    assert "Traceback" not in result.stdout.str() and "concatenate" not in result.stdout.str()
    _, rows = _rows(pytester)
    temperature = next(r for r in rows if r["metric"] == "temperature" and r["dataset"] == "imagenet-r")
    assert temperature["extra"]["fitted_on"] == "imagenet:calibration" and 0 < temperature["n"] <= 8
