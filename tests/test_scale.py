"""Scaling a run: torch threads for the machine, --precision / --batch-size, --device auto per xdist worker,
--shard I/N (and merging the shards)."""
from __future__ import annotations

import fnmatch
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clip_robustness.plugins.config import ConfigError, choose_threads, parse_shard, parse_threads
from tests.conftest import RANDOM_MODEL

# --------------------------------------------------------------------------------------------- threads


@pytest.mark.parametrize("workers, cores, load, expected", [
    (1, 2, 0.1, 2),  # a quiet 2-core machine: both cores
    (1, 2, 1.0, 1),  # one other busy process: 2 threads take 2.8x as long, 1 thread is unchanged
    (1, 2, 2.5, 1),  # busier than the cores: still one thread
    (2, 2, 0.0, 1),  # -n 2: one per worker
    (4, 16, 0.0, 4),  # the cores shared by the workers
    (4, 16, 8.0, 2),  # ... the free ones
    (1, 16, 1.0, 15),  # one busy process on many cores: the others
    (8, 2, 0.0, 1),  # more workers than cores
])
def test_auto_threads_share_the_free_cores(workers, cores, load, expected):
    count, why = choose_threads(None, workers=workers, cores=cores, load=load, env={})
    assert count == expected and why.startswith("auto")


def test_explicit_thread_counts_win_over_auto():
    assert choose_threads(None, workers=1, cores=2, load=0, env={"OMP_NUM_THREADS": "1"}) == (1, "OMP_NUM_THREADS")
    assert choose_threads(3, workers=1, cores=2, load=2, env={"OMP_NUM_THREADS": "1"}) == (3, "--threads")
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS='x': must be a positive integer"):
        choose_threads(None, workers=1, cores=2, load=0, env={"OMP_NUM_THREADS": "x"})
    assert parse_threads("auto") is None and parse_threads("4") == 4
    for bad in ("0", "-1", "two"):
        with pytest.raises(ConfigError, match="--threads"):
            parse_threads(bad)


THREADS_TEST = '''
import os
import pytest
import torch

pytestmark = pytest.mark.accuracy

def test_threads(clip, record):
    assert torch.get_num_threads() == int(os.environ["EXPECT_THREADS"])
    record("top1", 1.0, dataset="d", n=1)
'''


def test_thread_count_reaches_workers_header_and_report(pytester, run_harness, monkeypatch):
    pytester.makepyfile(test_t=THREADS_TEST)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("EXPECT_THREADS", "2")  # not the 1-per-worker share of the old rule
    result = run_harness("--model", RANDOM_MODEL, "--threads", "2", "-n", "2")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["robustness: threads=2 (--threads) precision=auto batch-size=256 shard=-"])
    run = json.loads((pytester.path / "reports" / "robustness.json").read_text())["run"]
    assert run["threads"] == 2 and run["config"]["threads"] == 2

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("EXPECT_THREADS", "1")
    result = run_harness("--model", RANDOM_MODEL)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["robustness: threads=1 (OMP_NUM_THREADS)*"])


# ----------------------------------------------------------------------------------- precision, batch size


def test_precision_resolves_per_device():
    from clip_robustness.fixtures.models import resolve_precision

    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda:1", bf16_supported=True) == "bf16"
    assert resolve_precision("auto", "cuda", bf16_supported=False) == "fp16"
    assert resolve_precision("fp32", "cuda:0", bf16_supported=True) == "fp32"  # the flag that turns autocast off
    assert resolve_precision("bf16", "cpu") == "bf16"


@pytest.fixture(scope="module")
def tiny_models():
    from clip_robustness.fixtures.models import load_model, parse_model_spec

    spec = parse_model_spec(RANDOM_MODEL)
    return {p: load_model(spec, precision=p, batch_size=3) for p in ("fp32", "bf16")}


@pytest.fixture(scope="module")
def images():
    from clip_robustness.fixtures.datasets import world_dataset

    return world_dataset("test", n=8)


def test_autocast_changes_embeddings_slightly_and_is_its_own_cache_entry(tiny_models, images, tmp_path):
    from clip_robustness.fixtures.cache import EmbeddingCache
    from clip_robustness.fixtures.embed import image_embeddings, model_key

    fp32, bf16 = tiny_models["fp32"], tiny_models["bf16"]
    assert "precision" not in model_key(fp32)  # fp32 keys as before: existing caches stay valid
    assert model_key(bf16)["precision"] == "bf16" and bf16.describe()["precision"] == "bf16"
    cache = EmbeddingCache(tmp_path)
    a = image_embeddings(fp32, images, cache)
    b = image_embeddings(bf16, images, cache)
    assert (cache.hits, cache.misses) == (0, 2)  # the bf16 model never reads the fp32 entry
    assert a.dtype == b.dtype == np.float32 and not np.array_equal(a, b)
    np.testing.assert_allclose(a, b, atol=0.05)  # bf16's 8-bit mantissa on unit vectors
    np.testing.assert_allclose(bf16.encode_texts(["a cup"]), fp32.encode_texts(["a cup"]), atol=0.05)


def test_overflow_under_autocast_names_the_precision_flag(tiny_models):
    from clip_robustness.fixtures.models import NonFiniteError

    with pytest.raises(NonFiniteError, match="overflow under bf16 autocast; run it with --precision fp32"):
        tiny_models["bf16"].require_finite(np.array([[np.inf, 0.0]]), "image embeddings", "world:test")


def test_batch_size_keeps_cpu_fp32_numbers_within_tolerance(tiny_models, images):
    from clip_robustness.plugins.report import SAMPLES_TOLERANCE

    model = tiny_models["fp32"]
    assert model.batch_size == 3
    pictures = images.images()
    np.testing.assert_allclose(model.encode_images(pictures), model.encode_images(pictures, batch_size=256),
                               **SAMPLES_TOLERANCE)


@pytest.mark.parametrize("args, sentence", [
    (("--precision", "fp8"), "*--precision 'fp8': use auto, fp32, fp16, bf16 (auto: fp32 on cpu, autocast on cuda)*"),
    (("--batch-size", "0"), "*--batch-size 0: must be a positive number of images per forward call*"),
    (("--threads", "0"), "*--threads '0': use a positive number of torch CPU threads, or auto*"),
    (("--shard", "5/4"), "*--shard '5/4': use I/N with 1 <= I <= N, one job per I*"),
])
def test_bad_scaling_options_stop_at_start(pytester, run_harness, args, sentence):
    pytester.makepyfile(test_t=THREADS_TEST)
    result = run_harness("--model", RANDOM_MODEL, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([sentence])
    assert "Traceback" not in result.stderr.str()


# --------------------------------------------------------------------------------------------- devices


def test_auto_device_gives_each_worker_one_gpu():
    from clip_robustness.fixtures.models import auto_device, resolve_device

    assert [auto_device(f"gw{i}", 2) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert auto_device(None, 2) == "cuda:0"  # a serial run
    assert [auto_device(w, 0) for w in ("gw0", "gw3", None)] == ["cpu"] * 3
    import torch

    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"


# --------------------------------------------------------------------------------------------- shards


def test_shards_split_every_test_once_and_keep_a_model_together():
    from clip_robustness.plugins.merge import shard_positions

    keys = [(model, f"test_{prop}.py::test[{model}]") for model in ("a", "b", "c") for prop in range(4)] + \
        [("", "test_plain.py::test")]
    for count in (1, 2, 3, 5, 13, 20):
        parts = [shard_positions(keys, i, count) for i in range(1, count + 1)]
        assert sorted(i for p in parts for i in p) == list(range(len(keys)))  # each test in exactly one shard
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    thirds = [{keys[i][0] for i in shard_positions(keys, i, 3)} for i in (1, 2, 3)]
    assert thirds == [{"", "a"}, {"a", "b"}, {"b", "c"}]  # contiguous by model: each on at most two shards
    shuffled = random.Random(0).sample(keys, len(keys))
    assert {shuffled[i] for i in shard_positions(shuffled, 2, 3)} == {keys[i] for i in shard_positions(keys, 2, 3)}
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) is None
    for bad in ("0/4", "5/4", "1/0", "a/b", "1-4"):
        with pytest.raises(ConfigError, match="use I/N with 1 <= I <= N"):
            parse_shard(bad)


def test_merged_shards_equal_one_run(pytester, run_harness, capsys):
    from clip_robustness.plugins.merge import main as merge_main
    from tests.test_plugin import RECORDING_TESTS

    pytester.makepyfile(test_props=RECORDING_TESTS)
    run_harness("--model", RANDOM_MODEL, "--report-dir", "full").assert_outcomes(passed=4)
    shards = []
    for i, n in ((1, 2), (2, 2)):
        result = run_harness("--model", RANDOM_MODEL, "--report-dir", f"shard{i}", "--shard", f"{i}/{n}")
        result.assert_outcomes(passed=2, deselected=2)
        result.stdout.fnmatch_lines([f"robustness: threads=* shard={i}/{n}"])
        shards.append(pytester.path / f"shard{i}" / "robustness.json")
        assert json.loads(shards[-1].read_text())["run"]["config"]["shard"] == [i, n]
    out = pytester.path / "merged"
    assert merge_main([*map(str, shards), "--out", str(out)]) == 0
    full = json.loads((pytester.path / "full" / "robustness.json").read_text())
    merged = json.loads((out / "robustness.json").read_text())
    assert merged["results"] == full["results"]  # same cells, values, CIs and per-sample files
    assert merged["run"]["config"]["shard"] is None
    assert [s["shard"] for s in merged["run"]["shards"]] == [[1, 2], [2, 2]]
    assert merged["run"]["gates"] == full["run"]["gates"]  # the rule audit of the whole run's rows
    selection = full["run"]["config"]["selection"]
    assert selection["tests"] == 4 and not selection["narrowed"]
    assert all(json.loads(p.read_text())["run"]["config"]["selection"] == selection for p in shards)

    # the selection is recorded before the cut, by the workers under xdist; -k cuts another selection
    narrow = run_harness("--model", RANDOM_MODEL, "--report-dir", "narrow", "--shard", "1/2", "-k", "separation",
                         "-n", "2")
    narrow.assert_outcomes(passed=1)  # shard 1 of the 3 tests -k selects
    narrow_path = pytester.path / "narrow" / "robustness.json"
    narrowed = json.loads(narrow_path.read_text())["run"]["config"]["selection"]
    assert (narrowed["tests"], narrowed["narrowed"]) == (3, True)
    capsys.readouterr()
    assert merge_main([str(narrow_path), str(shards[1]), "--out", str(pytester.path / "refused")]) == 2
    assert capsys.readouterr().err.startswith(f"error: shards differ in the test selection (-k, -m, file arguments): "
                                              f"3 tests (sha256 {narrowed['sha256'][:12]}) in {narrow_path}, 4 tests")
    assert not (pytester.path / "refused").exists()


def test_merge_refuses_a_missing_shard(tmp_path, capsys):
    from clip_robustness.plugins.merge import main as merge_main

    for name, shard in (("a", [1, 3]), ("b", [3, 3])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "robustness.json").write_text(json.dumps(
            {"run": {"seed": 0, "models": {}, "config": {"shard": shard}}, "results": []}))
    assert merge_main([str(tmp_path / "a" / "robustness.json"), str(tmp_path / "b" / "robustness.json"),
                       "--out", str(tmp_path / "out")]) == 2
    assert "shard 2/3 of the --shard I/3 run is missing" in capsys.readouterr().err



@pytest.fixture(scope="module")
def real_shards(tmp_path_factory) -> list[Path]:
    """The report folders of a real ``--shard 1/2``, ``--shard 2/2`` pair (MODEL_TESTS on the random model)."""
    root = tmp_path_factory.mktemp("real_shards")
    (root / "pyproject.toml").write_text("[tool.pytest.ini_options]\naddopts = ['--strict-markers']\n"
                                         "[[tool.robustness.thresholds]]\n"  # gates a cell of shard 2 only
                                         'property = "accuracy"\nmetric = "top1"\ncondition = "k=2"\nmin = 0.1\n')
    (root / "test_model.py").write_text(MODEL_TESTS)  # both shards load the model: its run.models entry is filled in
    for i in (1, 2):
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-q",
             f"--embedding-cache={root / '.emb'}", f"--model={RANDOM_MODEL}", f"--report-dir={root / f'shard{i}'}",
             f"--shard={i}/2"], cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
            timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    return [root / "shard1", root / "shard2"]


def _shard_copies(real_shards: list[Path], tmp_path: Path, edit=None) -> list[str]:
    """Copies of the real shard folders, shard 2's run section passed through ``edit``; their robustness.json."""
    paths = []
    for i, folder in enumerate(real_shards, 1):
        shutil.copytree(folder, tmp_path / f"s{i}")
        paths.append(tmp_path / f"s{i}" / "robustness.json")
    if edit:
        report = json.loads(paths[1].read_text())
        edit(report["run"])
        paths[1].write_text(json.dumps(report))
    return [str(p) for p in paths]


def _set_model(run, **fields):
    for info in run["models"].values():
        info.update(fields)


@pytest.mark.parametrize("edit, sentence", [
    (lambda run: run["config"].update(models=["embedded:vit-clip"]),
     "--model: {m} in {1}, embedded:vit-clip in {2}"),
    (lambda run: _set_model(run, sha256="0" * 64), "the weights (sha256) of model {m}: {sha} in {1}, {zeros} in {2}"),
    (lambda run: run["config"].update(limit=40), "--limit: none in {1}, 40 in {2}"),
    (lambda run: run.update(seed=1), "--seed: 0 in {1}, 1 in {2}"),
    (lambda run: (run["config"].update(precision="bf16"), _set_model(run, precision="bf16")),
     "--precision: fp32 in {1}, bf16 in {2}"),
    (lambda run: (run.update(device="cuda:0"), run["config"].update(device="cuda")),
     "the device kind (--device): cpu in {1}, cuda in {2}"),
    (lambda run: run["config"].update(templates=["simple"]), "--templates: openai,single in {1}, simple in {2}"),
    (lambda run: run["config"].update(template_files={"p.txt": "0" * 64}),
     "the --templates files' contents: {{}} in {1}, {{*p.txt*}} in {2}; re-run every shard with the same options"),
    (lambda run: run["config"]["thresholds"][0].update(min=0.5),
     "--thresholds (the gate rules): * rules (sha256 *) in {1}, * rules (sha256 *) in {2}"),
    (lambda run: run["config"].update(data={"imagenet": "/data/imagenet"}),
     "--data: none in {1}, imagenet=/data/imagenet in {2}"),
    (lambda run: run["config"].update(baseline="base/robustness.json"),
     "--baseline / --baseline-model: none in {1}, base/robustness.json in {2}"),
    (lambda run: run["config"].update(lmms=["embedded:world-llava"]),
     "--lmm: none in {1}, embedded:world-llava in {2}"),
    (lambda run: run["config"]["selection"].update(tests=12, sha256="0" * 64),
     "the test selection (-k, -m, file arguments): 3 tests (sha256 *) in {1}, 12 tests (sha256 000000000000) in {2}; "
     "re-run every shard with the same options"),
    (lambda run: run["config"].update(shard=[2, 3]), "the shard count N of --shard I/N: 2 in {1}, 3 in {2}; merge *"),
    (lambda run: run.update(git_commit="0" * 40),
     "the harness's git commit: {commit} in {1}, {zeros40} in {2}; re-run every shard from the same commit"),
    (lambda run: run["versions"].update(torch="0.0.1"),
     "the version of torch: {torch} in {1}, 0.0.1 in {2}; re-run every shard in the same environment"),
], ids=["models", "weights", "limit", "seed", "precision", "device", "templates", "template-files", "thresholds",
        "data", "baseline",
        "lmm", "selection", "shard-count", "git-commit", "versions"])
def test_merge_refuses_shards_of_different_runs(real_shards, tmp_path, capsys, edit, sentence):
    from clip_robustness.plugins.merge import main as merge_main

    paths = _shard_copies(real_shards, tmp_path, edit)
    run = json.loads(Path(paths[0]).read_text())["run"]
    [model] = run["models"]
    expected = sentence.format(paths[0], paths[0], paths[1], m=run["config"]["models"][0], zeros="0" * 64,
                               zeros40="0" * 40, sha=run["models"][model].get("sha256"),
                               commit=run["git_commit"] or "none", torch=run["versions"]["torch"])
    assert merge_main([*paths, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert fnmatch.fnmatch(err.strip(), f"error: shards differ in {expected}*"), err
    assert err.count("\n") == 1  # one sentence
    assert not (tmp_path / "out").exists()


def test_merge_refuses_a_shard_given_twice(real_shards, tmp_path, capsys):
    from clip_robustness.plugins.merge import main as merge_main

    first, second = _shard_copies(real_shards, tmp_path)
    assert merge_main([first, first, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {first} is given twice; give each shard's report once\n"
    shutil.copytree(Path(first).parent, tmp_path / "copy")
    copy = str(tmp_path / "copy" / "robustness.json")
    assert merge_main([first, second, copy, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: shard 1/2 is given twice (in {first} and {copy}); give each " \
                                      "shard's report once\n"
    assert not (tmp_path / "out").exists()


def test_merge_allows_what_differs_between_the_jobs_of_one_run(real_shards, tmp_path, capsys):
    from clip_robustness.plugins.merge import main as merge_main

    def other_job(run):
        run["config"].update(report_dir="/elsewhere", cache_dir=None, threads=3, batch_size=64, device="auto",
                             precision="fp32", thresholds_file="ci/gates.toml", strict=True)
        for rule in run["config"]["thresholds"]:
            rule["origin"] = "ci/" + rule["origin"]
        run.update(platform="another machine", threads=3, started_at="2030-01-01T00:00:00+00:00")

    paths = _shard_copies(real_shards, tmp_path, other_job)
    assert merge_main([*paths, "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err

    # shards cut by --model (no --shard) measure different models of one run
    paths = _shard_copies(real_shards, tmp_path / "by_model")
    data = json.loads(Path(paths[1]).read_text())
    data["run"]["config"].update(models=["embedded:vit-clip"])
    data["run"]["models"] = {"embedded:vit-clip": {"status": "measured", "arch": "world-vit-tiny", "sha256": "0" * 64}}
    Path(paths[1]).write_text(json.dumps(data))
    for path in paths:
        data = json.loads(Path(path).read_text())
        data["run"]["config"]["shard"] = None
        Path(path).write_text(json.dumps(data))
    assert merge_main([*paths, "--out", str(tmp_path / "out2")]) == 0, capsys.readouterr().err
    merged = json.loads((tmp_path / "out2" / "robustness.json").read_text())
    assert sorted(merged["run"]["models"]) == sorted([*json.loads(Path(paths[0]).read_text())["run"]["models"],
                                                      "embedded:vit-clip"])


def test_merged_run_section_is_recomputed_from_the_merged_rows(real_shards, tmp_path):
    """run.gates, the models' status, problems and cache counters are the whole run's: the fixture's rule for
    k=2 gates a cell of shard 2 only (shard 1 alone calls it unmatched); a model that failed to load on both
    shards is one problem with the tests it stopped on both."""
    from clip_robustness.plugins.merge import main as merge_main

    def fail_load(run):
        run["models"]["embedded:vit-clip"] = {"status": "failed to load: boom"}
        run["problems"].append({"test": f"test_model.py::t[vit-{len(run['problems'])}]", "model": "embedded:vit-clip",
                                "kind": "load", "message": "boom", "tests": 2})

    paths = _shard_copies(real_shards, tmp_path, fail_load)
    first = json.loads(Path(paths[0]).read_text())
    fail_load(first["run"])
    Path(paths[0]).write_text(json.dumps(first))
    shards = [json.loads(Path(p).read_text())["run"] for p in paths]

    def k2(run):
        return next(r for r in run["gates"]["rules"] if r["condition"] == "k=2")

    assert [(k2(run)["gated"], k2(run)["status"]) for run in shards] == [(0, "unmatched"), (1, "applied")]
    assert merge_main([*paths, "--out", str(tmp_path / "out")]) == 0
    run = json.loads((tmp_path / "out" / "robustness.json").read_text())["run"]
    assert (k2(run)["gated"], k2(run)["status"], k2(run)["note"]) == (1, "applied", "")
    assert not any("k=2" in line for line in run["gates"]["warnings"]), run["gates"]["warnings"]
    assert run["models"][RANDOM_MODEL]["status"] == "measured"
    assert run["models"]["embedded:vit-clip"]["status"] == "failed to load: boom"
    assert [(p["model"], p["tests"]) for p in run["problems"]] == [("embedded:vit-clip", 4)]
    assert run["cache"] == {k: sum(s["cache"][k] for s in shards) for k in shards[0]["cache"]}
    _assert_valid(run)

    # shard 2's job was given its thresholds file by another path: its rules and its rows' gates name it so
    second = json.loads(Path(paths[1]).read_text())
    for rule in second["run"]["config"]["thresholds"]:
        rule["origin"] = "ci/" + rule["origin"]
    for row in second["results"]:
        for gate in [row.get("gate") or {}, *((row.get("extra") or {}).get("gates") or [])]:
            if gate.get("rule"):
                gate["rule"] = "ci/" + gate["rule"]
    Path(paths[1]).write_text(json.dumps(second))
    assert merge_main([*paths, "--out", str(tmp_path / "out2")]) == 0
    run = json.loads((tmp_path / "out2" / "robustness.json").read_text())["run"]
    assert (k2(run)["gated"], k2(run)["status"]) == (1, "applied")


def test_merged_report_folder_has_its_run_id(real_shards, tmp_path):
    """QA (M): every report folder has samples/RUN_ID (README); the merged one had none."""
    from clip_robustness.plugins.merge import main as merge_main

    assert merge_main([*_shard_copies(real_shards, tmp_path), "--out", str(tmp_path / "out")]) == 0
    run_id = json.loads((tmp_path / "out" / "robustness.json").read_text())["run"]["run_id"]
    assert (tmp_path / "out" / "samples" / "RUN_ID").read_text() == run_id + "\n"


def test_merge_refuses_shards_compared_with_different_baseline_contents(real_shards, tmp_path, capsys):
    """QA (T1/T2): shards compared with different files under one --baseline path merged silently. Reports that
    record the baseline's run id and sha256 (run.config.baseline_run_id / baseline_sha256) are compared on them."""
    from clip_robustness.plugins.merge import main as merge_main

    def baseline(run_id=None, sha=None):
        def edit(run):
            run["config"]["baseline"] = "base/robustness.json"
            for key, value in (("baseline_run_id", run_id), ("baseline_sha256", sha)):
                run["config"].pop(key, None)  # a report from before these were recorded has neither
                if value:
                    run["config"][key] = value
        return edit

    def copies(where, first, second):
        paths = _shard_copies(real_shards, tmp_path / where, second)
        data = json.loads(Path(paths[0]).read_text())
        first(data["run"])
        Path(paths[0]).write_text(json.dumps(data))
        return paths

    paths = copies("sha", baseline("R1", "a" * 64), baseline("R1", "b" * 64))
    assert merge_main([*paths, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: shards differ in the baseline's contents (run.config.baseline_sha256): sha256 aaaaaaaaaaaa in "
                   f"{paths[0]}, sha256 bbbbbbbbbbbb in {paths[1]}; re-run every shard against the same baseline report "
                   "(the file under that path changed between jobs)\n")
    paths = copies("id", baseline("R1", "a" * 64), baseline("R2", "a" * 64))
    assert merge_main([*paths, "--out", str(tmp_path / "out")]) == 2
    assert "shards differ in the baseline's run id (run.config.baseline_run_id): R1 in" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # merged (exit 1 only because the hand-set baseline compared no cell: the merged audit's failure, not a refusal)
    for where, first in (("same", baseline("R1", "a" * 64)), ("older", baseline())):  # older: not recorded, not compared
        paths = copies(where, first, baseline("R1", "a" * 64))
        assert merge_main([*paths, "--out", str(tmp_path / where / "out")]) == 1
        assert capsys.readouterr().err.startswith("FAILED: --baseline base/robustness.json was compared with 0 of")
        assert (tmp_path / where / "out" / "robustness.json").is_file()


def test_a_shard_without_baseline_counterparts_passes_and_the_merge_decides(real_shards, tmp_path, capsys):
    """QA (U1/U2): under --shard, a job whose share of the tests has no baseline counterpart failed although the whole
    run compared cells (and CI then skipped the merge). A shard only warns; the merged audit fails the run when no
    shard compared any cell. QA (W1): a max_drop rule for cells only the baseline has is unmatched, not 'not
    applicable', and the summary counts the baseline's cells this run did not measure."""
    from clip_robustness.plugins.merge import main as merge_main

    root = real_shards[0].parent
    shutil.copytree(real_shards[1], tmp_path / "base")  # the baseline: shard 2's cells (k=1, k=2) only
    base = tmp_path / "base" / "robustness.json"
    data = json.loads(base.read_text())
    data["results"].append({**data["results"][0], "dataset": "wx", "condition": "k=0", "gate": None, "extra": {}})
    base.write_text(json.dumps(data))
    (tmp_path / "gates.toml").write_text('[[thresholds]]\nproperty = "accuracy"\nmetric = "top1"\ndataset = "wx"\n'
                                         'max_drop = 0.02\n')

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-q", "--rb-strict",
             f"--embedding-cache={root / '.emb'}", f"--model={RANDOM_MODEL}", f"--baseline={base}",
             f"--thresholds={tmp_path / 'gates.toml'}", *args],
            cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)

    shards = []
    for i in (1, 2):
        done = run(f"--shard={i}/2", f"--report-dir={tmp_path / f'shard{i}'}")
        assert done.returncode == 0, done.stdout + done.stderr
        shards.append(str(tmp_path / f"shard{i}" / "robustness.json"))
    first = json.loads(Path(shards[0]).read_text())["run"]["gates"]
    assert first["failures"] == [] and any("compared with none of the 1 cells of shard 1/2" in w
                                           for w in first["warnings"]), first
    assert merge_main([*shards, "--out", str(tmp_path / "merged")]) == 1  # the wx rule compared nothing
    out = capsys.readouterr()
    assert "FAILED: threshold rule" in out.err and "the baseline has 1 cell it matches (dataset 'wx')" in out.err
    gates = json.loads((tmp_path / "merged" / "robustness.json").read_text())["run"]["gates"]
    assert (gates["baseline"]["cells"], gates["baseline"]["compared"]) == (3, 2)
    assert gates["baseline"]["unmeasured"] == [["accuracy", RANDOM_MODEL, "wx", "k=0", "top1"]]

    whole = run(f"--report-dir={tmp_path / 'whole'}")  # unsharded: the rule fails the run under --rb-strict
    assert whole.returncode == 1, whole.stdout + whole.stderr
    assert f"baseline {base}: 2 of 3 measured cells compared ({RANDOM_MODEL}: 2/3); 1 baseline cell has no " \
           "counterpart in this run: wx (1 accuracy)" in whole.stdout
    assert "FAILED: threshold rule " in whole.stdout and "that this run did not measure" in whole.stdout


def _assert_valid(run):
    import jsonschema

    from clip_robustness.plugins.export import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors({"run": run, "results": []})) == []
    selection = run["config"]["selection"]
    assert selection["tests"] == 3 and len(selection["sha256"]) == 64 and selection["narrowed"] is False
    bad = {**run, "config": {**run["config"], "selection": {**selection, "sha256": "abc"}}}
    assert list(jsonschema.Draft202012Validator(schema).iter_errors({"run": bad, "results": []}))


MODEL_TESTS = '''
import pytest

@pytest.mark.accuracy
@pytest.mark.parametrize("k", range(3))
def test_model(clip, record, k):
    record("top1", 0.5, ci=(0.4, 0.6), n=10, dataset="synthetic", condition=f"k={k}", model=clip.id)
'''


def _workers_per_model(result: pytest.RunResult) -> dict[str, set[str]]:
    """From ``-v`` xdist lines ``[gw0] [ 16%] PASSED test_m.py::test_model[MODEL-0]``: the workers of each model."""
    out: dict[str, set[str]] = {}
    for line in result.outlines:
        found = re.match(r"\[(gw\d+)\].* PASSED \S+::test_model\[(.+)-\d\]", line)
        if found:
            out.setdefault(found[2], set()).add(found[1])
    return out


def test_loadgroup_spreads_the_tests_of_one_model_over_the_workers(pytester, run_harness):
    """With fewer models than workers, a model's tests carry no xdist group: under --dist loadgroup one model's
    tests spread (-n 2: both cores measure it) and give the rows of a serial run."""
    pytester.makepyfile(test_m=MODEL_TESTS)
    run_harness("--model", RANDOM_MODEL, "--report-dir", "serial").assert_outcomes(passed=3)
    one = run_harness("--model", RANDOM_MODEL, "-n", "2", "--dist", "loadgroup", "-v", "--report-dir", "grouped")
    one.assert_outcomes(passed=3)
    assert _workers_per_model(one) == {RANDOM_MODEL: {"gw0", "gw1"}}
    rows = [json.loads((pytester.path / d / "robustness.json").read_text())["results"] for d in ("serial", "grouped")]
    assert rows[0] == rows[1]


GROUP_SUFFIX_CONFTEST = """
import pytest

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    # what pytest-xdist's --dist loadgroup does to a grouped test (pytest < 9.2, or an xdist with #1386 fixed)
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        if mark is not None and hasattr(item, "_id"):
            from _pytest.nodeid import coerce_node_id
            item._id = coerce_node_id(item.nodeid + "@" + mark.args[0])
        elif mark is not None:
            item._nodeid = item.nodeid + "@" + mark.args[0]
"""


def test_the_loadgroup_suffix_of_a_node_id_changes_no_seed_row_or_key(pytester, run_harness):
    """pytest-xdist's --dist loadgroup appends ``@group`` to a grouped test's node id (on pytest 9.2 with xdist
    3.8 it silently does not: pytest-dev/pytest-xdist#1386). Seeds, rows and the result cache use the id without
    it, so a grouped run measures exactly what a serial run does, and replays it."""
    from clip_robustness.plugins.state import test_id

    assert test_id("t.py::test[m-1]@m") == "t.py::test[m-1]" and test_id("t.py::test[x@y]") == "t.py::test[x@y]"
    assert test_id("t.py::C::test@g") == "t.py::C::test" and test_id("d@v/t.py::test") == "d@v/t.py::test"
    from tests.test_plugin import RECORDING_TESTS

    grouped_tests = RECORDING_TESTS.replace("(record, rb_seed, shift)", "(record, rb_seed, shift, clip)")
    pytester.makepyfile(test_props=grouped_tests.replace("def test_plain(record)", "def test_plain(record, clip)"))
    run_harness("--model", RANDOM_MODEL, "--report-dir", "plain").assert_outcomes(passed=4)
    pytester.makeconftest(GROUP_SUFFIX_CONFTEST)
    suffixed = run_harness("--model", RANDOM_MODEL, "--report-dir", "suffixed", "-v")
    suffixed.assert_outcomes(passed=4)
    suffixed.stdout.fnmatch_lines([f"*test_separation[[]*]@{RANDOM_MODEL} PASSED*",
                                   f"*test_plain[[]{RANDOM_MODEL}[]]@{RANDOM_MODEL} PASSED*"])  # the suffix is there
    plain, grouped = (json.loads((pytester.path / d / "robustness.json").read_text())["results"]
                      for d in ("plain", "suffixed"))
    assert grouped == plain  # same seeds (same CIs), same test ids in the rows
    from types import SimpleNamespace

    from clip_robustness.plugins.replay import item_key

    keys = [item_key(SimpleNamespace(nodeid=f"t.py::test[m]{suffix}", callspec=SimpleNamespace(params={"clip": "m"})),
                     None, {}, {"m": "sha"}, {}, "code") for suffix in ("", "@m")]
    assert keys[0] == keys[1] and keys[0]["test"] == "t.py::test[m]"  # a grouped run replays a serial run's results


def test_numpy_blas_gets_the_runs_thread_count():
    """numpy's BLAS reads OMP_NUM_THREADS once, at import: without it in the environment the logits' matrix
    products ran on every core and moved their last bits against a run with it set to the same count."""
    from types import SimpleNamespace

    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from clip_robustness.fixtures.pytest_fixtures import _THREADS_SET, share_cpu_threads
    from clip_robustness.plugins.state import THREADS

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before_torch = torch.get_num_threads()
    with threadpool_limits(limits=2, user_api="blas"):  # as numpy starts on 2 cores without OMP_NUM_THREADS
        config = SimpleNamespace(stash={THREADS: (1, "--threads")})
        share_cpu_threads(config)
        assert blas_threads() == {1} and torch.get_num_threads() == 1 and config.stash[_THREADS_SET]
    torch.set_num_threads(before_torch)
