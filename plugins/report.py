"""Report data model: rows recorded by tests -> one ``robustness.json`` (+ samples) -> HTML.

Tests record rows in whichever process runs them (an xdist worker or the main process); the rows
travel as JSON strings in ``report.user_properties``, which xdist ships to the controller, so the
:class:`ReportSession` below (registered on the controller only) sees the same rows with and
without ``-n``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clip_robustness.fixtures._io import atomic_write, atomic_write_text
from clip_robustness.plugins.config import RunConfig
from clip_robustness.plugins.state import test_id

ROW_KEY, MODEL_KEY, CACHE_KEY = "rb_row", "rb_model", "rb_cache"
REPLAYED_KEY = "rb_replayed"  # on a test's call report: it was replayed (clip_robustness.plugins.replay)
PROBLEM_KEY = "rb_problem"  # a failed load, errored or failed test, shipped like rows (see problem_of)
# The report folder: these entries are the run's unit, swapped in together at session end (ReportSession._swap).
REPORT_ENTRIES = {"robustness.json": "file", "robustness.csv": "file", "robustness.html": "file", "samples": "folder"}
LOCK_NAME, STAGING_PREFIX, RUN_ID_FILE = ".robustness.lock", ".staging-", "RUN_ID"
# run.config.selection: the tests the command line selected, before the --shard cut (clip_robustness.plugins.merge
# selection_record); under xdist a worker writes it to SELECTION_FILE beside the suite signal for the controller
SELECTION, SELECTION_FILE = pytest.StashKey[dict](), "selection.json"
PACKAGES = ("torch", "torchvision", "open_clip_torch", "numpy", "scipy", "scikit-learn", "pillow", "transformers",
            "pytest", "pytest-xdist")  # the report's run.versions; also part of every result-cache key
# How far per-sample float32 arrays of two runs of one model may differ and still be "the same numbers"
# (serial vs -n N, docs/architecture.md): torch's CPU kernels sum in an order that depends on the
# thread count, which moves logits and scores in their last bits; bitwise equality holds only under one
# thread count (OMP_NUM_THREADS). Recorded values and CIs are computed from these arrays.
SAMPLES_TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def save_samples(report_dir: Path, arrays: dict[str, np.ndarray]) -> str:
    """Write per-sample arrays once per content; returns the path relative to ``report_dir`` (this run's
    staging folder). The name is a digest of the arrays, so the work is done once per content: a file
    this run already wrote is kept, one the previous report in the folder above holds is linked, not
    compressed again (a warm re-run records the same arrays)."""
    # Name by the arrays' content (not the zip bytes, which hold timestamps) so identical outputs share a file.
    from clip_robustness.plugins.stats import named_arrays_digest

    rel = f"samples/{named_arrays_digest(arrays)[:20]}.npz"
    path = Path(report_dir) / rel
    if path.exists():
        return rel
    previous = Path(report_dir).parent / rel  # the report folder's current samples/, swapped out at the end
    try:
        os.link(previous, path)
        return rel
    except OSError:  # none there, or another process linked it first, or a file system without links
        if path.exists():
            return rel
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in sorted(arrays.items())})
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    return rel


def load_samples(report_dir: Path, rel: str) -> dict[str, np.ndarray]:
    with np.load(Path(report_dir) / rel, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stable order independent of test scheduling (so -n 2 and a serial run write the same JSON rows)."""
    from clip_robustness.plugins.rows import row_key

    return sorted(rows, key=row_key)


def new_run_id() -> str:
    """UTC time plus a random suffix: names one run's JSON, HTML and samples (and its staging folder)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


class ReportDirError(ValueError):
    """The report folder cannot take this run's report; the message is one sentence naming it."""


def resolve_report_dir(config: RunConfig, rootdir: Path) -> Path:
    return config.report_dir if config.report_dir.is_absolute() else Path(rootdir) / config.report_dir


def check_report_dir(path: Path) -> None:
    """Refuse, before any model loads, a folder that cannot take the report. Creates nothing, so a run
    that measures nothing (the harness's own tests) leaves it alone; ReportSession.start creates it."""
    if path.exists() and not path.is_dir():
        raise ReportDirError(f"--report-dir {path}: a file is in the way of the report folder; "
                             "remove it or pass another --report-dir")
    for name, kind in REPORT_ENTRIES.items():
        entry = path / name
        if entry.exists() and entry.is_dir() != (kind == "folder"):
            raise ReportDirError(f"--report-dir {path}: {name} is a {'folder' if entry.is_dir() else 'file'} but the "
                                 f"report writes a {kind} there; remove it or pass another --report-dir")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ReportDirError(f"--report-dir {path}: {existing} is not a writable folder; pass a writable --report-dir")


def staging_dir(pytest_config: Any) -> Path:
    """Where this process writes the run's samples: the controller's staging folder (xdist workers get it
    through workerinput), swapped into the report folder with the JSON and HTML at session end."""
    workerinput = getattr(pytest_config, "workerinput", None)
    if workerinput is not None:
        return Path(workerinput["rb_staging"])
    return pytest_config.pluginmanager.get_plugin("robustness-report").staging


def problem_of(item: Any, call: Any, report: Any) -> dict[str, Any] | None:
    """The report's entry for a failed test phase: a model that failed to load, an error (setup or
    teardown) or a failure (call); None for gate failures, which the rows' verdicts already show."""
    import pytest

    from clip_robustness.plugins.state import load_failure

    err = call.excinfo.value
    # pytest.fail(..., pytrace=False) carries its sentence in .msg; anything else reads as "Type: message"
    message = str(err.msg) if isinstance(err, pytest.fail.Exception) else call.excinfo.exconly()
    if report.when == "call" and message.startswith("robustness gate failed:"):
        return None
    model = load_failure(item.config, message)
    kind = "load" if model else "fail" if report.when == "call" else "error"
    callspec = getattr(item, "callspec", None)
    model = model or (callspec.params.get("clip") if callspec is not None else None)
    return {"test": test_id(item.nodeid), "model": model, "kind": kind, "message": message.strip()[:2000]}


def collection_problem(report: Any) -> dict[str, Any]:
    """A module that could not be collected: its tests never ran. The message is the error's last line."""
    lines = [line for line in report.longreprtext.splitlines() if line.strip()] or ["collection failed"]
    return {"test": test_id(report.nodeid), "model": None, "kind": "error", "message": re.sub(r"^E\s+", "", lines[-1])}


def narrowed_selection(pytest_config: Any) -> bool:
    """Whether -k, -m or a node id narrowed the selection (a rule's cells may then be deselected)."""
    option = pytest_config.option
    return bool(getattr(option, "keyword", "") or getattr(option, "markexpr", "")
                or any("::" in str(arg) for arg in pytest_config.args))


def problem_list(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Problems in test order (stable under xdist); a load failure once per model, with the number of
    tests it stopped (the sum over shards, for a merged report)."""
    out: list[dict[str, Any]] = []
    loads: dict[str, dict[str, Any]] = {}
    for problem in sorted(problems, key=lambda p: (p["test"], p["kind"])):
        if problem["kind"] == "load":
            if problem["model"] in loads:
                loads[problem["model"]]["tests"] += problem.get("tests", 1)
                continue
            problem = loads[problem["model"]] = {**problem, "tests": problem.get("tests", 1)}
        out.append(problem)
    return out


def model_status(models: dict[str, dict[str, Any]], problems: list[dict[str, Any]],
                 rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``run.models`` with each model's status, so a report never lists a model as measured that was not."""
    failed = {p["model"]: p["message"] for p in problems if p["kind"] == "load"}
    measured = {r["model"] for r in rows}
    return {model_id: {**info, "status": f"failed to load: {failed[model_id]}" if model_id in failed
                       else "measured" if model_id in measured else "not measured"}
            for model_id, info in sorted(models.items())}


class ReportSession:
    """Controller-side aggregator: collects rows, writes the JSON and HTML at session end."""

    def __init__(self, config: RunConfig, rootdir: Path, pytest_config: Any) -> None:
        self.config = config
        self.rootdir = rootdir
        self.pytest_config = pytest_config
        self.rows: list[dict[str, Any]] = []
        self.models: dict[str, dict[str, Any]] = {}
        self.cache = {"hits": 0, "misses": 0, "replayed": 0}  # replayed: tests (clip_robustness.plugins.replay)
        self.started = time.time()
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.paths: dict[str, Path] = {}
        self.run_id = new_run_id()
        self.staging = self.report_dir / f"{STAGING_PREFIX}{self.run_id}"  # this run's JSON, HTML and samples/
        self.problems: list[dict[str, Any]] = []
        self._lock: Any = None  # the report folder's FileLock, held from start() to the end of the session
        self._signal: Path | None = None  # under xdist: a worker touches it when it collected property tests
        self._audit: tuple[int | None, dict[str, Any]] = (None, {})  # (row count, gate audit of those rows)

    @property
    def report_dir(self) -> Path:
        return resolve_report_dir(self.config, self.rootdir)

    def start(self) -> None:
        """The robustness suite is about to run: claim the report folder (a second run into it is refused,
        so neither loses its rows), clear staging folders left by killed runs, open this run's."""
        from filelock import FileLock, Timeout

        if self._lock is not None:
            return
        out = self.report_dir
        lock = FileLock(out / LOCK_NAME, blocking=False)
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            for stale in out.glob(f"{STAGING_PREFIX}*"):  # a live run would hold the lock
                shutil.rmtree(stale, ignore_errors=True)
            (self.staging / "samples").mkdir(parents=True)
        except Timeout:
            raise pytest.UsageError(f"--report-dir {out}: another run is writing its report there; wait for it "
                                    "to finish or pass another --report-dir") from None
        except OSError as err:
            if lock.is_locked:
                lock.release()
            raise pytest.UsageError(f"--report-dir {out}: cannot write there ({err.strerror or err}); "
                                    "pass a writable --report-dir") from None
        self._lock = lock

    def pytest_collection_finish(self, session: Any) -> None:
        from clip_robustness.plugins.properties import collected_properties

        if collected_properties(session):
            self.start()

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist: workers write samples into this run's staging folder and tell (through a file, as xdist
        reports only node ids) whether they collected property tests, before any test is scheduled."""
        if self._signal is None:
            self._signal = Path(tempfile.mkdtemp(prefix="rb-suite-")) / "collected"
        node.workerinput["rb_staging"] = str(self.staging)
        node.workerinput["rb_suite_signal"] = str(self._signal)
        from clip_robustness.plugins.state import THREADS

        node.workerinput["rb_threads"] = list(self.pytest_config.stash[THREADS])  # one thread count per run

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: Any) -> None:
        if self._signal is not None and self._signal.exists():
            self.start()

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.problems.append(collection_problem(report))

    def pytest_runtest_logreport(self, report: Any) -> None:
        for key, value in getattr(report, "user_properties", ()):
            # item.user_properties are copied onto the call *and* teardown reports: take rows from "call" only.
            if key == ROW_KEY and report.when == "call":
                self.rows.append(json.loads(value))
            elif key == MODEL_KEY and report.when == "call":
                info = json.loads(value)
                self.models.setdefault(info["id"], info["info"])
            elif key == PROBLEM_KEY:  # on the failed phase's report only, never copied to the others
                self.problems.append(json.loads(value))
            elif key == REPLAYED_KEY:
                self.cache["replayed"] += 1
            elif key == CACHE_KEY and report.when == "teardown":
                counts = json.loads(value)
                self.cache["hits"] += counts["hits"]
                self.cache["misses"] += counts["misses"]

    def build(self) -> dict[str, Any]:
        device = self.config.device
        run = {
            "config": {**self.config.to_json(), "selection": self.selection()},
            "seed": self.config.seed,
            "versions": package_versions(),
            "device": device,
            "threads": self._threads(),  # torch CPU threads per process (clip_robustness.plugins.config.choose_threads)
            "platform": platform.platform(),
            "git_commit": git_commit(self.rootdir),
            "started_at": self.started_at,
            "wall_time_s": round(time.time() - self.started, 3),
            "cache": dict(self.cache),
            "models": dict(sorted(self.models.items())),
            "gates": self.gate_audit(),
        }
        return {"run": run, "results": sort_rows(self.rows)}

    def selection(self) -> dict[str, Any] | None:
        """run.config.selection: the tests selected before the --shard cut, recorded where they were collected
        (this process, or an xdist worker), and whether -k, -m or a node id narrowed them."""
        found = self.pytest_config.stash.get(SELECTION, None)
        if found is None and self._signal is not None and (self._signal.parent / SELECTION_FILE).is_file():
            found = json.loads((self._signal.parent / SELECTION_FILE).read_text())
        return None if found is None else {**found, "narrowed": narrowed_selection(self.pytest_config)}

    def _threads(self) -> int | None:
        from clip_robustness.plugins.state import THREADS

        return self.pytest_config.stash[THREADS][0] if THREADS in self.pytest_config.stash else None

    def gate_audit(self) -> dict[str, Any]:
        """Rule and baseline usage over the rows seen so far (clip_robustness.plugins.gates.audit), computed once per row count."""
        from clip_robustness.plugins.gates import audit, baseline_cells

        if self._audit[0] != len(self.rows):
            baseline = None if self.config.baseline is None else str(self.config.baseline)
            if baseline is not None and not hasattr(self, "_baseline_cells"):  # read once: its models and cells
                self._baseline_cells = baseline_cells(self.config.baseline, self.config.baseline_models,
                                                      [spec.id for spec in self.config.models])
            self._audit = (len(self.rows), audit(self.config.thresholds, self.rows, baseline=baseline,
                                                 strict=self.config.strict,
                                                 selection=narrowed_selection(self.pytest_config),
                                                 shard=self.config.shard, baseline_models=self.config.baseline_models,
                                                 baseline_cells=getattr(self, "_baseline_cells", None)))
        return self._audit[1]

    def write_gate_summary(self, tr: Any) -> None:
        """Per rule what it gated / compared, baseline comparisons per model, then warnings and failures."""
        from clip_robustness.plugins.gates import unmeasured_summary

        gates = self.gate_audit()
        for rule in gates["rules"]:
            where = ", ".join(f"{k}={rule[k]}" for k in ("model", "dataset", "condition") if rule[k] != "*")
            tr.write_line(f"rule {rule['origin']}: {rule['property']}/{rule['metric']}"
                          + (f" [{where}]" if where else "")
                          + f": {rule['gated']} gated, {rule['compared']} compared - {rule['status']}"
                          + (f": {rule['note']}" if rule["note"] else ""))
        if gates["baseline"]:
            base = gates["baseline"]
            tr.write_line(f"baseline {base['path']}: {base['compared']} of {base['cells']} "  # 'measured' beside baseline-only cells
                          f"{'measured ' * bool(base.get('unmeasured'))}cells compared (" +
                          ", ".join(f"{m}: {c['compared']}/{c['cells']}" for m, c in base["models"].items()) + ")"
                          + unmeasured_summary(base))
        for line in gates["warnings"]:
            tr.write_line(f"WARNING: {line}", yellow=True)
        for line in gates["failures"]:
            tr.write_line(f"FAILED: {line}", red=True, bold=True)

    @pytest.hookimpl(tryfirst=True)  # before xdist shuts its workers down: their exits overlap the writing
    def pytest_sessionfinish(self, session: Any, exitstatus: int) -> None:
        # Without start() no property test ran (e.g. only the harness's own tests): reports/ is left alone.
        # With it, even a run that measured nothing writes its report, replacing the previous run's.
        try:
            if self._lock is not None:
                self._write()
                if not self.rows and session.exitstatus == pytest.ExitCode.OK:
                    # every test skipped (no --data for a -k that selects only real-data tests): an empty gate
                    # must not read as a pass in CI; pytest's own status for a run with nothing to run
                    session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
            if self._signal is not None:
                shutil.rmtree(self._signal.parent, ignore_errors=True)
            if self._lock is not None:
                self._lock.release()

    def _write(self) -> None:
        """Render JSON, HTML and samples/ of this run in its staging folder, then swap them in."""
        from clip_robustness.plugins.export import report_text, strict_report, write_csv
        from clip_robustness.plugins.html import write_html

        data = self.build()
        self.add_outcome(data["run"])
        data = strict_report(data)  # RFC 8259 JSON: a non-finite float is null, with what it was beside it
        stage, out = self.staging, self.report_dir
        atomic_write_text(stage / "samples" / RUN_ID_FILE, self.run_id + "\n")
        atomic_write_text(stage / "robustness.json", report_text(data))
        write_csv(data, stage / "robustness.csv")
        write_html(data, stage / "robustness.html", report_dir=stage, cache_dir=self.config.cache_dir)
        # Renames only from here (nothing left to fail or take time): a kill while rendering leaves the old
        # report whole. The old samples/ goes into the staging folder, deleted with it.
        if (out / "samples").exists():
            os.rename(out / "samples", stage / "samples.old")
        os.rename(stage / "samples", out / "samples")
        for name in ("robustness.html", "robustness.csv", "robustness.json"):
            os.replace(stage / name, out / name)
        self.paths.update(json=out / "robustness.json", csv=out / "robustness.csv", html=out / "robustness.html")
        self.pytest_config.hook.pytest_robustness_report(report=data, config=self.pytest_config)

    def add_outcome(self, run: dict[str, Any]) -> None:
        """Run id, problems and each model's status (a model that never loaded has no info, but is listed with why)."""
        problems = self.problem_list()
        models = {**{spec.id: {} for spec in self.config.models}, **run["models"]}
        run.update(run_id=self.run_id, problems=problems, models=model_status(models, problems, self.rows))

    def problem_list(self) -> list[dict[str, Any]]:
        return problem_list(self.problems)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.paths:
            return
        tr = terminalreporter
        tr.write_sep("-", "robustness report")
        verdicts: dict[str, int] = {}
        for row in self.rows:
            if row.get("gate"):
                verdicts[row["gate"]["verdict"]] = verdicts.get(row["gate"]["verdict"], 0) + 1
        tr.write_line(f"{len(self.rows)} metric cells, gates: " +
                      (", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())) or "none"))
        # the cache holds embeddings, heads, renders, CIs, search and LMM outcomes: one count for all
        tr.write_line(f"cache: {self.cache['hits']} hits, {self.cache['misses']} misses; {self.cache['replayed']} "
                      "tests replayed (nothing they depend on changed; --no-replay runs them)")
        self.write_gate_summary(tr)
        self.write_problems(tr)
        for kind, path in self.paths.items():
            tr.write_line(f"{kind}: {path}")

    def write_problems(self, tr: Any) -> None:
        """What the report says was not measured, and why."""
        if not self.rows:
            tr.write_line("this run measured nothing: the report says so and lists why (exit status 5 when no test "
                          "failed, so CI does not read an empty gate as a pass)", red=True, bold=True)
        for p in self.problem_list():
            kind = {"load": "failed to load", "error": "error", "fail": "failed"}[p["kind"]]
            stopped = f" ({p['tests']} tests not run)" if p.get("tests", 1) > 1 else ""
            who = p["model"] if p["kind"] == "load" else p["test"]
            tr.write_line(f"{kind}: {who}{stopped}: {(p['message'].splitlines() or [''])[0]}", red=True)
