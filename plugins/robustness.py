"""The pytest plugin: options, markers, header, gate failures at the end of a test. Work lives elsewhere.

The markers come from the property registry (clip_robustness.plugins.properties); the fixtures
(clip_robustness.fixtures.pytest_fixtures) hand the ``record`` fixture's Recorder its channel
(clip_robustness.plugins.recorder); per-process state is stashed under clip_robustness.plugins.state's keys.
Heavy modules (torch, open_clip) are imported lazily by the fixtures, never at plugin import.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clip_robustness.plugins.config import ConfigError, RunConfig, build_config
from clip_robustness.plugins.properties import PROPERTIES, collected_properties
from clip_robustness.plugins.state import CACHE_SNAPSHOT, RB_CONFIG, THREADS, available_cores, process_cache, test_id


# Wherever the plugin runs (this repository or a team's), a user's measurement never fails on a library's
# warning: the harness's own warnings are shown, known third-party deprecations are hidden. Appended after
# the project's own filters, so they win for these categories; tests/conftest.py puts "error" before them.
WARNING_FILTERS = (
    "default::clip_robustness.plugins.gates.InconclusiveGateWarning",
    "default::clip_robustness.fixtures.cache.CacheWarning",
    "ignore::DeprecationWarning:torch.*",
    "ignore::FutureWarning:open_clip.*",
    "ignore::UserWarning:open_clip.*",
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from clip_robustness.plugins import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("robustness", "CLIP robustness gate")
    group.addoption("--model", action="append", default=[], dest="rb_models", metavar="SPEC",
                    help="model to gate, repeatable: ARCH:TAG, ARCH@PATH, hf-hub:ORG/NAME, local-dir:PATH, "
                         "embedded:NAME, optionally ';key=value' metadata. Default: the embedded zoo's factor models.")
    group.addoption("--data", action="append", default=[], dest="rb_data", metavar="NAME=PATH",
                    help="real dataset for a property, repeatable (imagenet=, imagenet-v2=, ood:NAME=, ...)")
    group.addoption("--thresholds", dest="rb_thresholds", metavar="PATH",
                    help="TOML/JSON file of gate rules ([[thresholds]]); overrides [tool.robustness] rules")
    group.addoption("--baseline", dest="rb_baseline", metavar="PATH",
                    help="robustness.json of an earlier run to compare against (paired regression gates)")
    group.addoption("--baseline-model", action="append", default=[], dest="rb_baseline_models",
                    metavar="[MODEL=]BASELINE_MODEL",
                    help="baseline model to compare a (renamed) model with; plain NAME when the run has one model")
    group.addoption("--report-dir", dest="rb_report_dir", default="reports", metavar="DIR",
                    help="where robustness.json, robustness.html and samples/ are written (default: reports); "
                         "one run at a time per folder")
    group.addoption("--limit", dest="rb_limit", type=int, default=None, metavar="N",
                    help="at most N samples per dataset, for quick runs")
    group.addoption("--seed", dest="rb_seed", type=int, default=0, metavar="N", help="global seed (default 0)")
    group.addoption("--device", dest="rb_device", default="cpu", metavar="DEV",
                    help="cpu | cuda | cuda:N | auto (auto: CUDA when available, under xdist one GPU per worker "
                         "round-robin, else cpu)")
    group.addoption("--precision", dest="rb_precision", default="auto", metavar="P",
                    help="auto | fp32 | fp16 | bf16: autocast dtype of the model's forward (auto: fp32 on cpu, "
                         "bf16 on a cuda device that has it, else fp16); part of the embedding cache key")
    group.addoption("--batch-size", dest="rb_batch_size", type=int, default=256, metavar="N",
                    help="images per forward call (default 256)")
    group.addoption("--threads", dest="rb_threads", default="auto", metavar="N|auto",
                    help="torch CPU threads per process (auto: the free cores shared by the xdist workers, 1 on a "
                         "busy machine; an OMP_NUM_THREADS in the environment is used when this is auto)")
    group.addoption("--shard", dest="rb_shard", default=None, metavar="I/N",
                    help="run shard I of N of the selected tests (one CI job per I; a model's tests stay together "
                         "where the count allows), then join the reports with python -m clip_robustness.plugins.merge")
    # pytest owns `--strict` (its strict mode, which this project's ini enables anyway); the gate reads it
    # too, and `--rb-strict` sets the gate's strictness alone.
    group.addoption("--rb-strict", dest="rb_strict", action="store_true",
                    help="inconclusive gates (CI straddles the bound) fail the run; pytest's --strict implies it")
    group.addoption("--templates", action="append", default=[], dest="rb_templates", metavar="SET",
                    help="prompt template sets compared as the prompt factor: openai, simple, single or a file "
                         "(default: openai and single)")
    group.addoption("--lmm", action="append", default=[], dest="rb_lmms", metavar="SPEC",
                    help="LLaVA-style LMM for the lmm property, repeatable: embedded[:NAME], hf:ORG/NAME or a "
                         "local folder, optionally ';tower=MODEL_SPEC'. Default: the embedded LMM on the run's models")
    group.addoption("--embedding-cache", dest="rb_cache", default=None, metavar="DIR|off",
                    help="embedding cache folder (default: .pytest_cache/d/rb-embeddings); 'off' disables it")
    group.addoption("--no-replay", dest="rb_no_replay", action="store_true",
                    help="run every robustness test, even one whose stored result still holds (by default a test "
                         "whose code, models, data and options are unchanged is replayed from the cache folder)")


def pytest_configure(config: pytest.Config) -> None:
    # Each property is a marker (so `-m ood` and `-k ood` both select it) and a robustness_tests module.
    for prop in PROPERTIES.values():
        config.addinivalue_line("markers", f"{prop.name}: robustness property - {prop.description}")
    config.addinivalue_line("markers", "rb_model_group(name): the model whose tests these are (the shards' key)")
    for line in WARNING_FILTERS:
        config.addinivalue_line("filterwarnings", line)
    try:
        if not hasattr(config, "workerinput"):
            check_space_form(config)
        rb = build_config(
            models=config.getoption("rb_models"), data=config.getoption("rb_data"),
            thresholds=config.getoption("rb_thresholds"), baseline=config.getoption("rb_baseline"),
            report_dir=config.getoption("rb_report_dir"), limit=config.getoption("rb_limit"),
            seed=config.getoption("rb_seed"), device=config.getoption("rb_device"),
            strict=config.getoption("rb_strict") or bool(config.getoption("strict", False)), templates=config.getoption("rb_templates"),
            cache_dir=_cache_dir(config), rootdir=config.rootpath,
            baseline_models=config.getoption("rb_baseline_models"), lmms=config.getoption("rb_lmms"),
            threads=config.getoption("rb_threads"), precision=config.getoption("rb_precision"),
            batch_size=config.getoption("rb_batch_size"), shard=config.getoption("rb_shard"),
        )
        config.stash[THREADS] = run_threads(config, rb)
        if not hasattr(config, "workerinput"):  # check names once, on the controller
            from clip_robustness.fixtures.models import check_model_spec

            for spec in rb.models:
                check_model_spec(spec)
            from clip_robustness.fixtures.lmm.adapter import check_lmm_spec, parse_lmm_spec

            for lmm in rb.lmms:
                check_lmm_spec(parse_lmm_spec(lmm))
            from clip_robustness.plugins.report import check_report_dir, resolve_report_dir

            check_report_dir(resolve_report_dir(rb, config.rootpath))
    except (ConfigError, ValueError, KeyError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise pytest.UsageError(str(message)) from None
    config.stash[RB_CONFIG] = rb
    # The fixtures live in fixtures/ (with the rest of what tests consume); registering the module
    # here keeps conftest.py to one plugin name.
    from clip_robustness.fixtures import pytest_fixtures

    if not config.pluginmanager.is_registered(pytest_fixtures):
        config.pluginmanager.register(pytest_fixtures, "robustness-fixtures")
    from clip_robustness.plugins.progress import ProgressPlugin  # per-test progress, every process

    config.pluginmanager.register(ProgressPlugin(config), "robustness-progress")
    if rb.cache_dir is not None and not config.getoption("rb_no_replay"):  # every process: workers replay too
        from clip_robustness.plugins.replay import ResultCache

        config.pluginmanager.register(ResultCache(config, rb, process_cache(config)), "robustness-replay")
    if not hasattr(config, "workerinput"):  # the report is assembled on the controller only
        from clip_robustness.plugins.report import ReportSession

        config.pluginmanager.register(ReportSession(rb, config.rootpath, config), "robustness-report")


VALUE_OPTIONS = ("--model", "--data", "--thresholds", "--baseline", "--baseline-model", "--report-dir", "--templates",
                 "--lmm", "--embedding-cache")


def check_space_form(config: pytest.Config) -> None:
    """pytest chooses its root folder and ini file before it knows a plugin's options, so in ``--baseline /x/r.json``
    it takes /x/r.json for a test path: the run then misses the project's pytest settings (testpaths, ...) and
    collects whatever tests it finds (the harness's own, once). Refuse that case; ``--baseline=/x/r.json`` is read
    right."""
    cwd = config.invocation_params.dir
    expected = _nearest_ini(cwd)
    if expected is None or config.inipath == expected:
        return  # the project's settings were read, or there are none to miss
    root = config.rootpath
    if config.inipath is not None and any(Path(cwd, a).resolve() == root or root in Path(cwd, a).resolve().parents
                                          for a in config.args):
        return  # the run's own test paths lie in another project, whose settings were read
    args = [str(a) for a in config.invocation_params.args]
    for option, value in zip(args, args[1:]):
        if option in VALUE_OPTIONS and Path(cwd, value).exists():
            raise ConfigError(f"{option} {value}: pytest took this path for a test path when it chose the run's "
                              f"root folder ({root}), before it knew {option} takes a value, so the run would miss "
                              f"this project's settings ({expected.name}); write it as {option}={value}")


def _nearest_ini(folder: Path) -> Path | None:
    """The pytest configuration file pytest finds from ``folder`` upwards when nothing else points elsewhere
    (pytest's own search, ``_pytest.config.findpaths.locate_config``, is private API)."""
    wanted = {"pytest.ini": "", ".pytest.ini": "", "pyproject.toml": "[tool.pytest", "tox.ini": "[pytest]",
              "setup.cfg": "[tool:pytest]"}
    for place in (folder, *folder.parents):
        for name, section in wanted.items():
            path = place / name
            try:
                if path.is_file() and section in path.read_text(encoding="utf-8", errors="replace"):
                    return path
            except OSError:
                continue
    return None


def run_threads(config: pytest.Config, rb: RunConfig) -> tuple[int, str]:
    """The run's torch thread count: chosen on the controller (before workers add load) and handed to
    xdist workers (clip_robustness.plugins.report.ReportSession.pytest_configure_node), so one run has one count."""
    import os

    handed = getattr(config, "workerinput", {}).get("rb_threads")
    if handed is not None:
        return tuple(handed)
    from clip_robustness.plugins.config import choose_threads

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return choose_threads(rb.threads, workers=xdist_workers(config), cores=available_cores(), load=load,
                          env=dict(os.environ))


def xdist_workers(config: pytest.Config) -> int:
    """How many xdist workers this run starts (1 without xdist); xdist has expanded -n into --tx by now."""
    if getattr(config.option, "dist", "no") == "no":
        return 1
    specs = getattr(config.option, "tx", None) or []
    return max(1, sum(int(s.partition("*")[0]) if "*" in s else 1 for s in specs))


def _cache_dir(config: pytest.Config) -> Path | None:
    from clip_robustness.plugins.config import parse_embedding_cache

    def default() -> Path:
        cache = getattr(config, "cache", None)
        return Path(cache.mkdir("rb-embeddings")) if cache is not None else \
            config.rootpath / ".pytest_cache" / "d" / "rb-embeddings"

    return parse_embedding_cache(config.getoption("rb_cache"), default)


def pytest_report_header(config: pytest.Config) -> list[str]:
    from clip_robustness.plugins.gates import rule_sources

    rb = config.stash[RB_CONFIG]
    lines = [
        "robustness: models: " + ", ".join(m.id for m in rb.models),
        f"robustness: device={rb.device} seed={rb.seed} limit={rb.limit} templates={','.join(rb.templates)} "
        f"strict={rb.strict}",
        f"robustness: threads={config.stash[THREADS][0]} ({config.stash[THREADS][1]}) precision={rb.precision} "
        f"batch-size={rb.batch_size} shard={'/'.join(map(str, rb.shard)) if rb.shard else '-'}",
        f"robustness: cache={rb.cache_dir or 'off'} report={rb.report_dir} baseline={rb.baseline or '-'}",
        f"robustness: thresholds: {rule_sources(rb.thresholds)}",
        "robustness: data: " + (", ".join(f"{k}={v}" for k, v in rb.data.items()) or "embedded world"),
    ] + ([f"robustness: lmm: {', '.join(rb.lmms)}"] if rb.lmms else [])
    if rb.baseline is not None:
        from clip_robustness.plugins.config import models_without_baseline

        lacking, known = models_without_baseline(rb.models, rb.baseline_models, rb.baseline)
        if lacking:  # some models only (none at all is a usage error at start)
            lines.append(f"robustness: WARNING: --baseline {rb.baseline} holds no model {', '.join(lacking)} "
                         f"(it holds {', '.join(known)}); those models are not compared: pass --baseline-model "
                         f"MODEL=BASELINE_MODEL to compare them")
        from clip_robustness.plugins.regression import baseline_warnings

        lines += [f"robustness: WARNING: {line}" for line in baseline_warnings(rb)]
    return lines


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A gate that checked nothing fails the run: a baseline compared with no cell, and under
    --rb-strict a threshold rule that matched no cell (the sentences are in the terminal summary)."""
    report = session.config.pluginmanager.get_plugin("robustness-report")
    if report is not None and report.rows and report.gate_audit()["failures"] and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def model_group_marks(config: pytest.Config, group: str) -> list[pytest.MarkDecorator]:
    """A test's model group (``rb_model_group``: the shards' key, ``--shard``) and, when the run has at least as
    many models as xdist workers, the same ``xdist_group``: under ``--dist loadgroup`` each model then loads in
    one worker only. With fewer models than workers the tests of a model spread over the workers instead (one
    model, -n 2: both cores measure it), each loading what it needs."""
    rb = config.stash[RB_CONFIG]
    workers = int(getattr(config, "workerinput", {}).get("workercount", 0))
    marks = [pytest.mark.rb_model_group(group)]
    return marks + [pytest.mark.xdist_group(group)] if len(rb.models) >= workers else marks


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every test that takes ``clip`` over the run's models, one group per model."""
    if "clip" in metafunc.fixturenames:
        rb = metafunc.config.stash[RB_CONFIG]
        params = [pytest.param(spec.id, id=spec.id, marks=model_group_marks(metafunc.config, spec.id))
                  for spec in rb.models]
        metafunc.parametrize("clip", params, indirect=True, scope="session")
    if "lmm" in metafunc.fixturenames:
        from clip_robustness.fixtures.lmm.adapter import run_lmms

        rb = metafunc.config.stash[RB_CONFIG]
        pairs = run_lmms(rb.lmms, [m.id for m in rb.models])
        params = [pytest.param(spec.raw or spec.id, id=spec.id,
                               marks=model_group_marks(metafunc.config, tower or spec.id)) for spec, tower in pairs]
        metafunc.parametrize("lmm", params or [pytest.param(None, marks=pytest.mark.skip(
            reason="no LMM to measure: pass --lmm SPEC (the embedded LMM is built on embedded:rn-clip)"))],
            indirect=True, scope="session")


@pytest.hookimpl(trylast=True)  # after -k / -m: the shards split what the command line selected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marks = [m.name for m in item.iter_markers() if m.name in PROPERTIES]
        if len(set(marks)) > 1:
            raise pytest.UsageError(f"{item.nodeid}: one robustness property per test, found {sorted(set(marks))}")
    from clip_robustness.plugins.merge import selection_record, shard_positions

    record_selection(config, selection_record([test_id(item.nodeid) for item in items]))  # before the cut
    shard = config.stash[RB_CONFIG].shard
    if shard is not None:
        group = [item.get_closest_marker("rb_model_group") for item in items]
        keys = [(str(g.args[0]) if g else "", test_id(item.nodeid)) for g, item in zip(group, items)]
        keep = shard_positions(keys, *shard)
        if len(keep) < len(items):
            config.hook.pytest_deselected(items=[item for i, item in enumerate(items) if i not in keep])
            items[:] = [item for i, item in enumerate(items) if i in keep]


def record_selection(config: pytest.Config, selection: dict[str, Any]) -> None:
    """For run.config.selection: kept in this process, and under xdist written for the controller (which
    does not collect) beside the suite signal; every worker collects the same tests, so writes the same."""
    from clip_robustness.fixtures._io import atomic_write_text
    from clip_robustness.plugins.report import SELECTION, SELECTION_FILE

    config.stash[SELECTION] = selection
    signal = getattr(config, "workerinput", {}).get("rb_suite_signal")
    if signal:
        atomic_write_text(Path(signal).with_name(SELECTION_FILE), json.dumps(selection))


@pytest.hookimpl(tryfirst=True)  # before xdist sends the worker's collection (node ids only) to the controller
def pytest_collection_finish(session: pytest.Session) -> None:
    signal = getattr(session.config, "workerinput", {}).get("rb_suite_signal")
    if signal and collected_properties(session):
        Path(signal).touch()  # the controller claims the report folder (clip_robustness.plugins.report.ReportSession.start)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    from clip_robustness.fixtures.datasets import DatasetError
    from clip_robustness.fixtures.models import NonFiniteError

    try:
        result = yield
        problem = None
    except NonFiniteError as err:  # NaN outputs: one sentence, never a traceback nor a number
        problem = str(err)
    except DatasetError as err:  # a dataset found unusable while measuring (an unreadable image): its sentence
        problem = str(err)
    if problem:  # failed outside the except block, so pytest shows the sentence without a chain
        pytest.fail(problem, pytrace=False)
    from clip_robustness.plugins.recorder import raise_gate_failures

    raise_gate_failures(item)
    return result


def pytest_runtest_setup(item: pytest.Item) -> None:
    cache = process_cache(item.config)
    item.stash[CACHE_SNAPSHOT] = (cache.hits, cache.misses)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    if report.failed and call.excinfo is not None:  # shipped to the controller's report (-n too)
        from clip_robustness.plugins.report import PROBLEM_KEY, problem_of

        problem = problem_of(item, call, report)
        if problem is not None:
            report.user_properties.append((PROBLEM_KEY, json.dumps(problem)))
    if call.when == "teardown" and CACHE_SNAPSHOT in item.stash:
        from clip_robustness.plugins.report import CACHE_KEY

        cache = process_cache(item.config)
        hits0, misses0 = item.stash[CACHE_SNAPSHOT]
        report.user_properties.append(
            (CACHE_KEY, json.dumps({"hits": cache.hits - hits0, "misses": cache.misses - misses0})))
    return report
