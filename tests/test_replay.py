"""The result cache (clip_robustness.plugins.replay): a bundled suite test whose inputs are unchanged is
replayed from its stored record calls, re-gated with this run's thresholds, without importing torch.

Each run is a pytest subprocess in pytester's folder. ``replay_probe`` (loaded with ``-p``, so it is no
conftest and not part of any key) writes which tests were replayed, where their stored entries are, and
whether the process imported torch. Only the bundled suite is replayed (``SUITE_DIR``); tests that need a
module to edit or a test that counts its own executions run copies in pytester's folder, which the probe
declares the suite when ``REPLAY_PROBE_SUITE`` names it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RANDOM_MODEL, REPO

SUITE = REPO / "robustness_tests"

PROBE = '''
"""Loaded with -p by tests/test_replay.py: which tests this run replayed, their entries, and torch."""
import json
import os
import sys
from pathlib import Path

import pytest

from clip_robustness.plugins import replay

if os.environ.get("REPLAY_PROBE_SUITE"):  # this folder's modules stand for the bundled suite
    replay.SUITE_DIR = Path(os.environ["REPLAY_PROBE_SUITE"])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    result = yield
    key = item.stash.get(replay.RESULT_KEY, None)
    line = {"test": item.name, "replayed": item.stash.get(replay.REPLAYED, False), "key": key}
    with open(Path(str(item.config.rootpath)) / f"probe-{os.getpid()}.jsonl", "a") as handle:
        handle.write(json.dumps(line) + "\\n")
    return result


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):
        (Path(str(session.config.rootpath)) / "torch-imported").write_text(str("torch" in sys.modules))
'''

# Property tests that write their name to runs.txt each time their body executes (a replay does not).
GATED = '''
import pytest

pytestmark = pytest.mark.calibration


def ran(name):
    with open("runs.txt", "a") as handle:
        handle.write(name + "\\n")


def test_low(record):
    ran("low")
    record("ece", 0.03, ci=(0.02, 0.04), n=100, dataset="d1", model="m")


def test_high(record):
    ran("high")
    record("ece", 0.5, ci=(0.45, 0.55), n=100, dataset="d2", model="m")


def test_error(record):
    ran("error")
    record("ece", 0.03, ci=(0.02, 0.04), n=100, dataset="d3", model="m")
    raise RuntimeError("the test body broke after recording")
'''

SCORES = '''
import numpy as np
import pytest

from clip_robustness.plugins.metrics import ood_auroc_score

pytestmark = pytest.mark.ood


def test_scores(record):
    with open("runs.txt", "a") as handle:
        handle.write("scores\\n")
    rng = np.random.default_rng(0)
    scores_in, scores_out = rng.normal(1, 1, 200), rng.normal(0, 1, 200)
    record.measure("auroc", ood_auroc_score, scores_in, scores_out, two_sample=True, dataset="synthetic",
                   model="m", samples={"scores_in": scores_in, "scores_out": scores_out})
'''


def rule(dataset: str, bound: float) -> str:
    return f'[[thresholds]]\nproperty = "calibration"\nmetric = "ece"\ndataset = "{dataset}"\nmax = {bound}\n'


@pytest.fixture
def harness(pytester, run_harness):
    """``run_harness`` with the probe; returns (result, report, probe lines) and clears the probe files."""
    pytester.makepyfile(replay_probe=PROBE)

    def run(*args: str):
        result = run_harness("-p", "replay_probe", *args)
        lines = []
        for path in sorted(pytester.path.glob("probe-*.jsonl")):
            lines += [json.loads(line) for line in path.read_text().splitlines()]
            path.unlink()
        report = pytester.path / "reports" / "robustness.json"
        return result, json.loads(report.read_text()) if report.is_file() else None, lines

    return run


@pytest.fixture
def as_suite(pytester, monkeypatch):
    """Modules in pytester's folder count as the bundled suite (the probe moves ``SUITE_DIR`` there)."""
    monkeypatch.setenv("REPLAY_PROBE_SUITE", str(pytester.path))


def runs(pytester) -> list[str]:
    path = pytester.path / "runs.txt"
    return path.read_text().split() if path.is_file() else []


def replayed(report: dict) -> int:
    return report["run"]["cache"]["replayed"]


def cell(row: dict) -> tuple:
    return row["test"], row["metric"], row["dataset"], row["condition"]


def test_unchanged_run_is_replayed_without_torch_and_reports_the_same(pytester, harness):
    """The bundled accuracy and calibration tests (the suite as installed, no probe patch): the second run
    replays all 10 from their stored calls, in a process that never imports torch, and writes the same rows
    (values, CIs, n, gates, extra, per-sample file names) and run.models; -n 2 replays them too. A property
    test outside the suite runs every time."""
    pytester.makepyfile(test_outside=GATED.split("\n\ndef test_high")[0])
    args = (str(SUITE / "test_accuracy.py"), str(SUITE / "test_calibration.py"), "test_outside.py",
            "-c", "pyproject.toml", "--rootdir", str(pytester.path),
            "--model", RANDOM_MODEL, "--limit", "12", "--templates", "single",
            "-k", "top1_world or calibration_world or low")
    cold, first, probe = harness(*args)
    cold.assert_outcomes(passed=11, deselected=2)
    assert replayed(first) == 0 and not any(line["replayed"] for line in probe)
    assert (pytester.path / "torch-imported").read_text() == "True"  # the probe can tell

    warm, second, probe = harness(*args)
    warm.assert_outcomes(passed=11, deselected=2)
    assert replayed(second) == 10
    assert {line["test"] for line in probe if line["replayed"]} == {
        line["test"] for line in probe if line["test"] != "test_low"}
    assert runs(pytester) == ["low", "low"]
    assert (pytester.path / "torch-imported").read_text() == "False"
    warm.stdout.fnmatch_lines(["cache: 0 hits, 0 misses; 10 tests replayed*"])
    assert len(first["results"]) == 5 * 1 + 5 * 11 + 1
    assert second["results"] == first["results"]
    assert second["run"]["models"] == first["run"]["models"]
    for row in second["results"]:
        assert row["samples"] is None or (pytester.path / "reports" / row["samples"]).is_file()

    parallel, third, _ = harness(*args, "-n", "2")
    parallel.assert_outcomes(passed=11)
    assert replayed(third) == 10
    assert sorted(third["results"], key=cell) == sorted(first["results"], key=cell)
    assert third["run"]["models"] == first["run"]["models"]


def test_each_input_change_reruns(pytester, harness, as_suite):
    """One change at a time, the seed, --limit, the templates file's content, the checkpoint's bytes (an
    ARCH@PATH model) and the test module's source each make the test run again; touching the checkpoint
    does not (its bytes decide). Changes accumulate, so a change missing from the key would replay the run
    before it. The test records without loading the model: what decides a replay is the key alone."""
    weights = REPO / "fixtures" / "zoo" / "weights"
    checkpoint = pytester.path / "model.safetensors"
    shutil.copyfile(weights / "rn-clip.safetensors", checkpoint)
    templates = pytester.path / "prompts.txt"
    templates.write_text("a photo of a {c}.\n")
    module = pytester.makepyfile(test_gated=GATED)
    options = {"--model": f"world-rn-tiny@{checkpoint}", "--templates": str(templates), "--limit": "12",
               "--seed": "0", "-k": "low"}

    def run() -> int:
        result, report, _ = harness(*[part for pair in options.items() for part in pair])
        result.assert_outcomes(passed=1, deselected=2)
        return replayed(report)

    assert run() == 0
    changes = {
        "seed": lambda: options.update({"--seed": "1"}),
        "limit": lambda: options.update({"--limit": "11"}),
        "templates file": lambda: templates.write_text("a picture of a {c}.\n"),
        "checkpoint bytes": lambda: shutil.copyfile(weights / "rn-clip-small.safetensors", checkpoint),
        "test module": lambda: module.write_text(module.read_text() + "\n# edited\n"),
    }
    for name, change in changes.items():
        change()
        assert run() == 0, f"a changed {name} was replayed"
    assert runs(pytester) == ["low"] * 6
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))
    assert run() == 1 and runs(pytester) == ["low"] * 6


def test_replay_regates_with_this_runs_thresholds(pytester, harness, as_suite):
    """A passing test replays failing under a stricter --thresholds rule (with the gate sentence), and
    passing again under the first rules; a test that failed on its gate is stored and replays failing; a test
    that errors is never stored, so it runs every time."""
    pytester.makepyfile(test_gated=GATED)
    pytester.makefile(".toml", high=rule("d2", 0.1), both=rule("d2", 0.1) + rule("d1", 0.01))

    result, report, _ = harness("--model", RANDOM_MODEL, "--thresholds", "high.toml")
    result.assert_outcomes(passed=1, failed=2)
    assert replayed(report) == 0 and runs(pytester) == ["low", "high", "error"]

    result, report, probe = harness("--model", RANDOM_MODEL, "--thresholds", "both.toml")
    result.assert_outcomes(failed=3)
    assert replayed(report) == 2 and runs(pytester)[3:] == ["error"]
    assert {line["test"] for line in probe if line["replayed"]} == {"test_low", "test_high"}
    result.stdout.fnmatch_lines(["*robustness gate failed:*",
                                 "*ece=0.03 (95% CI 0.02–0.04) exceeds the bound 0.01 for m on d1*"])
    result.stdout.fnmatch_lines(["*ece=0.5 (95% CI 0.45–0.55) exceeds the bound 0.1 for m on d2*"])
    result.stdout.fnmatch_lines(["*test_error*RuntimeError: the test body broke after recording*"])
    verdicts = {row["dataset"]: (row["gate"] or {}).get("verdict") for row in report["results"]}
    assert verdicts == {"d1": "fail", "d2": "fail", "d3": None}

    result, report, _ = harness("--model", RANDOM_MODEL, "--thresholds", "high.toml")
    result.assert_outcomes(passed=1, failed=2)
    assert replayed(report) == 2 and runs(pytester)[4:] == ["error"]
    verdicts = {row["dataset"]: (row["gate"] or {}).get("verdict") for row in report["results"]}
    assert verdicts == {"d1": None, "d2": "fail", "d3": None}


def test_replay_can_be_turned_off(pytester, harness, as_suite):
    """--no-replay and --embedding-cache off run every test; what was stored still replays afterwards."""
    pytester.makepyfile(test_gated=GATED.split("\n\ndef test_high")[0])
    for off in ([], ["--no-replay"], ["--embedding-cache", "off"]):
        result, report, _ = harness("--model", RANDOM_MODEL, *off)
        result.assert_outcomes(passed=1)
        assert replayed(report) == 0
    assert runs(pytester) == ["low"] * 3
    result, report, _ = harness("--model", RANDOM_MODEL)
    assert replayed(report) == 1 and runs(pytester) == ["low"] * 3


def test_a_corrupt_entry_runs_the_test_again_with_a_warning(pytester, harness, as_suite):
    """The stored entry (found from the key the run used, as the cache names its files), then one of the
    per-sample arrays it points to, overwritten: each time the test runs again, passes, and says so in a
    CacheWarning; the run stores it anew and the next run replays it."""
    from clip_robustness.fixtures.cache import EmbeddingCache, cache_key

    pytester.makepyfile(test_scores=SCORES)
    result, report, probe = harness("--model", RANDOM_MODEL)
    result.assert_outcomes(passed=1)
    cache = EmbeddingCache(pytester.path / ".emb")
    key = probe[0]["key"]
    entry_path = cache.path_for(cache_key({**key, "encoding": "json"}))
    (call,) = cache.peek_json(key)["calls"]
    assert call["sample_names"] == ["scores_in", "scores_out"]
    samples_path = cache.path_for(cache_key({"kind": "result-samples", "digest": call["samples"],
                                             "name": "scores_out"}))
    first = report["results"]

    for broken in (entry_path, samples_path):
        broken.write_bytes(b"not an npz file")
        result, report, _ = harness("--model", RANDOM_MODEL)
        result.assert_outcomes(passed=1, warnings=1)
        result.stdout.fnmatch_lines([f"*CacheWarning: corrupt cache entry {broken}*recomputing*"])
        assert replayed(report) == 0 and report["results"] == first
    assert runs(pytester) == ["scores"] * 3
    result, report, _ = harness("--model", RANDOM_MODEL)
    assert replayed(report) == 1 and report["results"] == first and runs(pytester) == ["scores"] * 3


def test_the_key_reads_zoo_configs_lmm_towers_and_imagefolder_files(tmp_path, monkeypatch):
    """Inputs read by content though no model fingerprint or option string shows them: a zoo architecture's
    JSON (a random-init or ARCH@PATH model is built from it), an LMM's ``;tower=`` checkpoint, and the
    classnames/templates files of an imagefolder --data set."""
    from types import SimpleNamespace

    from clip_robustness.plugins import replay

    package = tmp_path / "package"
    for name, text in {"plugins/a.py": "A = 1\n", "fixtures/zoo/configs/arch.json": '{"width": 8}'}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    monkeypatch.setattr(replay, "PACKAGE_ROOT", package)
    before = replay.code_fingerprint([])
    (package / "fixtures/zoo/configs/arch.json").write_text('{"width": 16}')
    assert replay.code_fingerprint([]) != before
    (package / "plugins/a.py").rename(package / "fixtures/a.py")
    moved = replay.code_fingerprint([])
    (package / "fixtures/a.py").rename(package / "plugins/a.py")
    assert replay.code_fingerprint([]) != moved
    monkeypatch.undo()

    folder, tower = tmp_path / "llava", tmp_path / "tower.safetensors"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    tower.write_bytes(b"first weights")
    spec = f"{folder};tower=world-rn-tiny@{tower}"
    before = replay.lmm_fingerprint(spec)
    tower.write_bytes(b"other weights")
    assert replay.lmm_fingerprint(spec) != before
    with pytest.raises(replay.NotFingerprintable):
        replay.lmm_fingerprint(f"{folder};tower=hf-hub:org/name")

    classnames = tmp_path / "classnames.txt"
    classnames.write_text("cat\ndog\n")
    rb = SimpleNamespace(templates=("single",), seed=0, limit=None, precision="auto", device="cpu", data={},
                         data_options={"imagefolder:pets": {"classnames": classnames}})
    before = replay.run_inputs(rb)
    classnames.write_text("dog\ncat\n")
    assert replay.run_inputs(rb) != before


def test_the_key_reads_the_prototypes_list_beside_an_imagenet_x_file(tmp_path):
    """--data imagenet-x=FILE: the loader also reads prototypical_paths.csv beside it (which images count)."""
    from types import SimpleNamespace

    from clip_robustness.plugins import replay

    annotations = tmp_path / "imagenet_x_val_top_factor.jsonl"
    annotations.write_text("{}\n")
    rb = SimpleNamespace(templates=("single",), seed=0, limit=None, precision="auto", device="cpu",
                         data={"imagenet-x": annotations}, data_options={})
    without = replay.run_inputs(rb)
    (tmp_path / "prototypical_paths.csv").write_text("file_name\nILSVRC2012_val_00000001.JPEG\n")
    listed = replay.run_inputs(rb)
    (tmp_path / "prototypical_paths.csv").write_text("file_name\n")
    assert len({str(without), str(listed), str(replay.run_inputs(rb))}) == 3


def test_the_key_reads_the_models_labels():
    """`--model "embedded:rn-clip;finetune=ft"` after a plain run replayed the stored description (finetune none)."""
    from types import SimpleNamespace

    from clip_robustness.fixtures.model_specs import parse_model_spec
    from clip_robustness.plugins import replay

    def fingerprints(spec: str) -> dict:
        rb = SimpleNamespace(templates=("single",), seed=0, limit=None, precision="auto", device="cpu", data={},
                             data_options={}, models=[parse_model_spec(spec)], lmms=())
        return replay.ResultCache(None, rb, None).inputs()[1]

    plain, labelled = fingerprints("embedded:rn-clip"), fingerprints("embedded:rn-clip;finetune=ft")
    assert plain.keys() == labelled.keys() and plain != labelled != fingerprints("embedded:rn-clip;finetune=lp")
    assert plain["embedded:rn-clip"] == replay.model_fingerprint(parse_model_spec("embedded:rn-clip"))  # kept


def test_the_key_reads_a_template_files_name_as_well_as_its_content(tmp_path):
    """Two files of one content under two paths: the cells' conditions name the path, so a replay of the other
    path's stored result named a file this run never used."""
    from types import SimpleNamespace

    from clip_robustness.plugins import replay

    for folder in ("t1", "t2"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "p.txt").write_text("a photo of a {c}.\n")

    def key(path):
        return replay.run_inputs(SimpleNamespace(templates=(str(path),), seed=0, limit=None, precision="auto",
                                                 device="cpu", data={}, data_options={}))

    assert key(tmp_path / "t1" / "p.txt") != key(tmp_path / "t2" / "p.txt")
    before = key(tmp_path / "t1" / "p.txt")
    (tmp_path / "t1" / "p.txt").write_text("a sketch of a {c}.\n")
    assert key(tmp_path / "t1" / "p.txt") != before


def test_the_key_of_a_cross_model_test_follows_the_model_order():
    """mCE takes the run's first model as its reference when rn-clip is absent: --model A --model B and
    --model B --model A must not share a stored result."""
    from types import SimpleNamespace

    from clip_robustness.fixtures.cache import cache_key
    from clip_robustness.plugins.replay import item_key

    item = SimpleNamespace(nodeid="test_corruption2d.py::test_mce_world")
    ab = item_key(item, None, {}, {"a": "fa", "b": "fb"}, {}, "code")
    ba = item_key(item, None, {}, {"b": "fb", "a": "fa"}, {}, "code")
    assert cache_key(ab) != cache_key(ba)
    assert cache_key(ab) == cache_key(item_key(item, None, {}, {"a": "fa", "b": "fb"}, {}, "code"))


def test_a_data_folder_digest_is_its_listing_as_it_always_was(tmp_path):
    """A folder without links: the digest is sha256 over ``relative path NUL size NUL mtime_ns LF`` per file,
    sorted, as before links were followed, so results stored by earlier runs still replay."""
    from clip_robustness.plugins.replay import tree_fingerprint

    (tmp_path / "n01").mkdir()
    (tmp_path / "a.JPEG").write_bytes(b"abc")
    (tmp_path / "n01" / "b.JPEG").write_bytes(b"hello")
    os.utime(tmp_path / "a.JPEG", ns=(1, 1_700_000_000_123_456_789))
    os.utime(tmp_path / "n01" / "b.JPEG", ns=(1, 1_600_000_000_000_000_001))
    expected = hashlib.sha256(b"a.JPEG\x003\x001700000000123456789\n"
                              b"n01/b.JPEG\x005\x001600000000000000001\n").hexdigest()
    assert tree_fingerprint(tmp_path) == expected


def test_a_data_folder_is_read_through_symlinked_class_folders(tmp_path):
    """An ImageNet copy as a symlink farm (each class folder a link elsewhere), as the loaders read it: an image
    added inside a linked class folder changes the digest, so the old result is not replayed."""
    from clip_robustness.plugins.replay import tree_fingerprint

    root, elsewhere = tmp_path / "imagenet", tmp_path / "elsewhere" / "n01484850"
    root.mkdir()
    elsewhere.mkdir(parents=True)
    (elsewhere / "1.JPEG").write_bytes(b"one")
    os.symlink(elsewhere, root / "n01484850")
    before = tree_fingerprint(root)
    (elsewhere / "2.JPEG").write_bytes(b"two")
    assert tree_fingerprint(root) != before


def test_a_symlink_loop_in_a_data_folder_ends(tmp_path):
    """Class folders linking back to the data folder (``up -> ..``): the walk ends (in a subprocess, so a walk
    that followed them unguarded, 2**40 paths, fails on its timeout), and the links are in the digest (a loader
    following them reads more images)."""
    from clip_robustness.plugins.replay import tree_fingerprint

    root = tmp_path / "imagenet"
    for name in ("n01", "n02"):
        (root / name).mkdir(parents=True)
        (root / name / "a.JPEG").write_bytes(b"a")
    before = tree_fingerprint(root)
    for name in ("n01", "n02"):
        os.symlink("..", root / name / "up")
    code = f"from clip_robustness.plugins.replay import tree_fingerprint; print(tree_fingerprint({str(root)!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == tree_fingerprint(root) != before


def test_a_broken_link_in_a_data_folder_is_digested_not_raised(tmp_path):
    """A broken link (left for the dataset loader to report) gives a digest, which changes once it is repaired."""
    from clip_robustness.plugins.replay import tree_fingerprint

    (tmp_path / "n01491361").mkdir()
    link, target = tmp_path / "n01491361" / "broken.JPEG", tmp_path / "restored.JPEG"
    os.symlink(target, link)
    broken = tree_fingerprint(tmp_path)
    target.write_bytes(b"image")
    assert tree_fingerprint(tmp_path) != broken


def test_a_file_name_that_is_not_utf8_is_digested(tmp_path):
    """A name that is not UTF-8 (``caf\\xe9.JPEG``, from a zip made on Windows) is digested by its bytes, in a
    data folder and in an ARCH@PATH model folder."""
    from clip_robustness.fixtures.model_specs import parse_model_spec
    from clip_robustness.plugins.replay import model_fingerprint, tree_fingerprint

    empty = tree_fingerprint(tmp_path)
    try:
        with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.JPEG"), "wb") as handle:
            handle.write(b"image")
    except OSError as error:
        pytest.skip(f"this filesystem refuses a file name that is not UTF-8 ({error})")
    assert tree_fingerprint(tmp_path) != empty
    assert model_fingerprint(parse_model_spec(f"world-rn-tiny@{tmp_path}")) == tree_fingerprint(tmp_path)


def test_the_code_digest_reads_past_an_editors_lock_link(tmp_path, monkeypatch):
    """Emacs's lock file beside a file being edited (``plugins/.#a.py -> user@host.123``) matches ``*.py`` and
    points nowhere: the code digest is still computed."""
    from clip_robustness.plugins import replay

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "a.py").write_text("A = 1\n")
    os.symlink("user@host.123:1700000000", tmp_path / "plugins" / ".#a.py")
    monkeypatch.setattr(replay, "PACKAGE_ROOT", tmp_path)
    assert replay.code_fingerprint([]) != replay.code_fingerprint([tmp_path / "plugins" / "a.py"])
