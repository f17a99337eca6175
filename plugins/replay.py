"""The result cache: a robustness test whose inputs did not change is replayed, not run.

A bundled suite test's outcome is a function of the harness's code, the test module (and the conftest files loaded),
the models' weights, the data, and the options that change a measurement (seed, --limit, templates,
precision, device type, LMMs). When a test passed (or failed only on its gates), its ``record`` calls
are stored, keyed by all of these; a later run with the same key replays the calls through a fresh
``Recorder`` instead of running the test, so gates, the baseline comparison and the per-sample files are
those of the current run (a changed thresholds file or baseline needs no re-measurement) and nothing
imports torch or loads a model. Anything that cannot be fingerprinted without loading it (an
``hf-hub:`` model, an ``hf:`` LMM: their hub revision can move) runs every time.

Fingerprints: file contents by sha256 (memoised on disk by path, size, mtime and inode, so a large
checkpoint is hashed once); data folders by the list of their files with sizes and mtimes (hashing
ImageNet's 50,000 files every run would cost more than it saves). pytest-testmon skips tests by the same
kind of key; it cannot see model weights or data folders, which are most of what decides a result here.
Entries live in the embedding cache folder with the same integrity check; ``--embedding-cache off`` and
``--no-replay`` turn replay off.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from clip_robustness.fixtures.zoo import file_sha256
from clip_robustness.plugins.report import package_versions
from clip_robustness.plugins.stats import named_arrays_digest
from clip_robustness.plugins.state import test_id

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding plugins/ and fixtures/
# the harness's code, and the zoo's architecture configs: a random-init or ARCH@PATH model of a zoo
# architecture is built from its JSON, which no model fingerprint reads
CODE_GLOBS = ("plugins/**/*.py", "fixtures/**/*.py", "fixtures/zoo/configs/*.json")
SUITE_DIR = PACKAGE_ROOT / "robustness_tests"  # only the bundled suite's tests are replayed
RESULT_VERSION = 1  # part of every key: bump to drop all stored results
RESULT_KEY = pytest.StashKey[dict]()  # per item: its key, when it can be replayed
REPLAYED = pytest.StashKey[bool]()  # per item: it was replayed in this process


class NotFingerprintable(Exception):
    """An input whose content cannot be known without loading it: the test runs."""


def file_fingerprint(path: Path, cache: Any = None) -> str:
    """sha256 of a file's bytes, memoised in ``cache`` (an EmbeddingCache) by path, size, mtime, ctime, inode."""
    path = Path(path).resolve()
    stat = path.stat()
    if cache is None:
        return file_sha256(path)
    # ctime too: mtime can be set back (cp -p), ctime moves on every write
    parts = {"kind": "file-sha256", "path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}
    return cache.get_or_compute_json(parts, lambda: file_sha256(path))


def tree_fingerprint(path: Path, cache: Any = None) -> str:
    """A file's content digest, or a folder's listing digest (relative path, size, mtime of every file).

    The walk follows symlinked folders, as the dataset loaders do (an ImageNet symlink farm's class folders
    are links), and skips a folder whose real path it has already walked (a link to an ancestor would loop).
    It never raises: a broken link or an unreadable entry is digested as such, so repairing it changes the
    digest, and the loader reports it. Names are digested as bytes: a name that is not UTF-8 (a zip made on
    Windows) is valid. A folder without links or bad entries digests as it always did (stored results stay valid).
    """
    path = Path(path).resolve()
    if path.is_file():
        return file_fingerprint(path, cache)
    digest = hashlib.sha256()

    def entry(full: str, what: bytes) -> None:
        digest.update(os.fsencode(os.path.relpath(full, path)) + b"\0" + what + b"\n")

    def unlistable(error: OSError) -> None:  # os.walk's report of a folder it cannot list
        entry(error.filename, b"unreadable folder\0" + _error_name(error))

    walked = {str(path)}
    for dirpath, dirnames, filenames in os.walk(path, onerror=unlistable, followlinks=True):
        dirnames.sort()
        for name in list(dirnames):
            full = os.path.join(dirpath, name)
            real = os.path.realpath(full)
            if real in walked:  # a loop, or a second link to one folder: its files are in the digest once
                dirnames.remove(name)
                entry(full, b"folder walked as\0" + os.fsencode(os.path.relpath(real, path)))
            walked.add(real)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                stat = os.stat(full)
            except OSError as error:  # a broken link (or a link loop), an entry that cannot be read
                if os.path.islink(full):  # its target too: pointing it elsewhere changes the digest
                    entry(full, b"broken link\0" + os.fsencode(os.readlink(full)))
                else:
                    entry(full, b"unreadable\0" + _error_name(error))
                continue
            entry(full, f"{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _error_name(error: OSError) -> bytes:
    return errno.errorcode.get(error.errno or 0, "error").encode()


def code_fingerprint(extra_files: list[Path]) -> str:
    """Digest of the harness's own files (``CODE_GLOBS``, each named by its path in the package) and
    ``extra_files`` (the test module, conftest files; named by file name)."""
    files = sorted({p for pattern in CODE_GLOBS for p in PACKAGE_ROOT.glob(pattern)})
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.fsencode(path.relative_to(PACKAGE_ROOT).as_posix()) + b"\0" + _contents(path) + b"\0")
    for path in sorted(set(map(Path, extra_files))):
        digest.update(os.fsencode(path.name) + b"\0" + _contents(path) + b"\0")
    return digest.hexdigest()


def _contents(path: Path) -> bytes:
    """A file's bytes; a marker for one that cannot be read (Emacs's lock link ``.#replay.py`` matches ``*.py``
    and points nowhere) rather than an exception that would end the session."""
    try:
        return path.read_bytes()
    except OSError as error:
        return b"unreadable\0" + _error_name(error)


def model_fingerprint(spec: Any, cache: Any = None) -> str:
    """What fixes a ``--model``'s weights: the seeded architecture, the zoo files, the checkpoint's bytes, or
    (a pretrained tag) the tag with open_clip's version; a hub model raises NotFingerprintable."""
    if spec.kind == "random":
        return f"random:{spec.arch}"
    if spec.kind == "tag":  # open_clip's released weights for this tag are fixed for its version
        return f"tag:{spec.arch}:{spec.source}"
    if spec.kind == "embedded":
        from clip_robustness.fixtures.zoo import INDEX_PATH, ZOO_DIR

        return tree_fingerprint(ZOO_DIR / "weights", cache) + file_fingerprint(INDEX_PATH, cache)
    if spec.kind in ("path", "local-dir"):
        path = Path(spec.source).expanduser()
        if not path.exists():
            raise NotFingerprintable(f"{spec.source} does not exist")
        return tree_fingerprint(path, cache)
    raise NotFingerprintable(f"a {spec.kind} model is resolved only when loaded")


def lmm_fingerprint(raw: str, cache: Any = None) -> str:
    """An LMM's folder and, when it is a separate model (``;tower=``, the embedded LMM's record), its CLIP
    tower: an ``hf:`` LMM or a hub tower raises NotFingerprintable."""
    from clip_robustness.fixtures.lmm.adapter import declared_tower, parse_lmm_spec
    from clip_robustness.fixtures.model_specs import parse_model_spec

    spec = parse_lmm_spec(raw)
    if spec.kind == "hf":
        raise NotFingerprintable("an hf: LMM is resolved only when loaded")
    folder = tree_fingerprint(Path(spec.folder), cache)
    tower = declared_tower(spec)
    return folder if tower is None else folder + ";tower=" + model_fingerprint(parse_model_spec(tower), cache)


def run_inputs(rb: Any, cache: Any = None) -> dict[str, Any]:
    """The run-wide part of every key: options that change a measurement, data, templates, libraries.
    Not in it: the thresholds and baseline (re-applied on replay), batch size and threads (they move
    results within float tolerance only, as in the embedding cache's key)."""
    templates = []
    for name in rb.templates:
        path = Path(name)
        # a file by its content and by the name the cells' conditions carry (a replay must name this run's file)
        templates.append([name, file_fingerprint(path, cache)] if path.is_file() else name)
    return {
        "version": RESULT_VERSION, "seed": rb.seed, "limit": rb.limit, "templates": templates,
        "precision": rb.precision, "device": rb.device.split(":")[0],
        "data": {name: data_fingerprint(Path(path), cache) for name, path in sorted(rb.data.items())},
        # an imagefolder's classnames/templates files: by content, as the templates above
        "data_options": {k: {o: file_fingerprint(Path(v), cache) if Path(v).is_file() else str(v)
                             for o, v in sorted(opts.items())} for k, opts in sorted(rb.data_options.items())},
        "libraries": package_versions(),
    }


def data_fingerprint(path: Path, cache: Any = None) -> str:
    """A --data path's content: a folder's listing, or a file's bytes with those of the file its loader reads
    beside it (ImageNet-X's prototypical_paths.csv, which decides which images are measured)."""
    fingerprint = tree_fingerprint(path, cache)
    if path.is_file():
        from clip_robustness.fixtures.imagenet_x import PROTOTYPES

        beside = path.parent / PROTOTYPES
        fingerprint += ":" + (file_fingerprint(beside, cache) if beside.is_file() else "no " + PROTOTYPES)
    return fingerprint


def item_key(item: Any, rb: Any, run_key: dict[str, Any], models: dict[str, str], lmms: dict[str, str],
             code: str) -> dict[str, Any] | None:
    """The key of one test: the run's inputs, the code, and the models (and LMM) the test measures;
    None when one of them cannot be fingerprinted."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    used = [params["clip"]] if "clip" in params else list(models)
    if any(models.get(m) is None for m in used):
        return None
    # a list, in --model order: a cross-model test's reference is the run's first model
    key = {"kind": "test-result", "test": test_id(item.nodeid), "code": code, "run": run_key,
           "models": [[m, models[m]] for m in used]}
    if "lmm" in params:
        fingerprint = lmms.get(params["lmm"])
        if fingerprint is None:
            return None
        key["lmm"] = fingerprint
    return key


class ResultCache:
    """The pytest side: replays a test whose key is stored, stores the record calls of one that ran.

    Registered in every process (controller and xdist workers) when the cache is on. A replayed test
    goes through pytest's reporting like a run one (setup, call, teardown reports; the call phase
    re-applies the gates), so -x, --lf, xdist and the terminal see an ordinary test.
    """

    def __init__(self, config: Any, rb: Any, cache: Any) -> None:
        self.config, self.rb, self.cache = config, rb, cache
        self._inputs: tuple[dict[str, Any], dict[str, str | None], dict[str, str | None]] | None = None
        self._code: dict[Path, str] = {}

    def inputs(self) -> tuple[dict[str, Any], dict[str, str | None], dict[str, str | None]]:
        """(run key, model fingerprints, LMM fingerprints), computed once per process."""
        if self._inputs is None:
            models: dict[str, str | None] = {}
            for spec in self.rb.models:
                try:
                    # the --model ;key=value labels too: a stored result carries the model's description
                    models[spec.id] = model_fingerprint(spec, self.cache) + (
                        json.dumps(sorted(spec.metadata)) if spec.metadata else "")
                except (NotFingerprintable, OSError):
                    models[spec.id] = None
            lmms: dict[str, str | None] = {}
            for raw in self.rb.lmms:
                try:
                    lmms[raw] = lmm_fingerprint(raw, self.cache)
                except (NotFingerprintable, OSError, ValueError):
                    lmms[raw] = None
            self._inputs = (run_inputs(self.rb, self.cache), models, lmms)
        return self._inputs

    def key(self, item: Any) -> dict[str, Any] | None:
        from clip_robustness.plugins.properties import PROPERTIES

        if not any(mark.name in PROPERTIES for mark in item.iter_markers()):
            return None
        if not Path(str(item.path)).resolve().is_relative_to(SUITE_DIR):
            return None  # a team's own test may read inputs the key cannot see (files, environment): it runs
        run_key, models, lmms = self.inputs()
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "lmm" in params and params["lmm"] is None:
            return None  # no LMM to measure: the test skips itself
        if "lmm" in params and params["lmm"] not in lmms:  # an embedded LMM chosen by the run, not --lmm
            try:
                lmms[params["lmm"]] = lmm_fingerprint(params["lmm"], self.cache)
            except (NotFingerprintable, OSError, ValueError):
                lmms[params["lmm"]] = None
        module = Path(str(item.path))
        if module not in self._code:
            conftests = [Path(p.__file__) for p in self.config.pluginmanager.get_plugins()
                         if getattr(p, "__name__", "").rpartition(".")[2] == "conftest" and getattr(p, "__file__", None)]
            self._code[module] = code_fingerprint([module, *conftests])
        return item_key(item, self.rb, run_key, models, lmms, self._code[module])

    # -- running: look up, replay, store ---------------------------------------------------------------

    def lookup(self, item: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(key, stored entry with its samples loaded) of ``item``; the entry is None when absent or
        incomplete (an evicted or corrupt samples file: the test runs and stores it again)."""
        key = self.key(item)
        if key is None:
            return {}, None
        entry = self.cache.peek_json(key)
        if entry is None:
            return key, None
        for call in entry["calls"]:
            if call["samples"] is not None:
                arrays = {name: self.cache.peek({"kind": "result-samples", "digest": call["samples"], "name": name})
                          for name in call["sample_names"]}
                if any(value is None for value in arrays.values()):
                    return key, None
                call["arrays"] = arrays
        return key, entry

    def store(self, key: dict[str, Any], calls: list[dict[str, Any]], models: dict[str, Any]) -> None:
        """Store a finished test's record calls (samples by digest, each array once) and model blocks. A test
        whose per-sample arrays hold NaN or inf is not stored: the cache never serves non-finite arrays."""
        import numpy as np

        if any(np.asarray(v).dtype.kind in "fc" and not np.isfinite(v).all()
               for call in calls for v in (call.get("arrays") or {}).values()):
            return
        stored, written = [], set()
        for call in calls:
            call = dict(call)
            samples = call.pop("arrays", None)
            call["samples"] = named_arrays_digest(samples) if samples else None
            call["sample_names"] = sorted(samples) if samples else []
            for name, value in (samples or {}).items():
                if (call["samples"], name) not in written:  # tests pass one samples dict to many rows
                    self.cache.put({"kind": "result-samples", "digest": call["samples"], "name": name}, value)
                    written.add((call["samples"], name))
            stored.append(call)
        self.cache.put_json(key, {"calls": stored, "models": models})  # samples stored apart, by digest

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        if self.config.option.setuponly or self.config.option.setupplan:
            return None
        key, entry = self.lookup(item)
        if key:
            item.stash[RESULT_KEY] = key
        if entry is None:
            return None  # pytest runs the test; pytest_runtest_makereport stores what it recorded
        self._replay(item, nextitem, entry)
        return True

    def _replay(self, item: pytest.Item, nextitem: pytest.Item | None, entry: dict[str, Any]) -> None:
        """The three phases of pytest's protocol, reported as pytest reports them; the call phase feeds the
        stored record calls to a fresh Recorder (gates, baseline comparison and samples of this run)."""
        from clip_robustness.fixtures.pytest_fixtures import recorder_for
        from clip_robustness.plugins.recorder import raise_gate_failures
        from clip_robustness.plugins.report import REPLAYED_KEY
        from clip_robustness.plugins.stats import seed_for

        def call() -> None:
            record = recorder_for(item, seed_for(self.rb.seed, test_id(item.nodeid)), None, entry["models"].get)
            for stored in entry["calls"]:
                record(stored["metric"], stored["value"], dataset=stored["dataset"], condition=stored["condition"],
                       ci=stored["ci"], n=stored["n"], samples=stored.get("arrays"), extra=stored["extra"],
                       model=stored["model"], undefined=stored["undefined"])
            raise_gate_failures(item)

        phases = (("setup", lambda: None), ("call", call),
                  # nothing was set up for this test; what the previous test left that the next one does not
                  # need is torn down now, as pytest's own teardown phase would (its setup stack stays exact)
                  ("teardown", lambda: item.session._setupstate.teardown_exact(nextitem)))
        item.stash[REPLAYED] = True
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for when, run in phases:
            info = pytest.CallInfo.from_call(run, when=when, reraise=(pytest.exit.Exception, KeyboardInterrupt))
            report = item.ihook.pytest_runtest_makereport(item=item, call=info)
            if when == "call":
                report.user_properties.append((REPLAYED_KEY, "1"))
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Any:
        report = yield
        if call.when == "call" and RESULT_KEY in item.stash and not item.stash.get(REPLAYED, False) \
                and _finished(report, call):
            from clip_robustness.fixtures.pytest_fixtures import RECORDED_CALLS
            from clip_robustness.plugins.report import MODEL_KEY

            models = {}
            for name, value in item.user_properties:
                if name == MODEL_KEY:
                    shipped = json.loads(value)
                    models[shipped["id"]] = shipped["info"]
            self.store(item.stash[RESULT_KEY], item.stash.get(RECORDED_CALLS, []), models)
        return report


def _finished(report: Any, call: Any) -> bool:
    """The test body ran to its end: it passed, or failed on its gates only (which a replay re-applies)."""
    if report.passed:
        return True
    from clip_robustness.plugins.recorder import GATE_FAILED

    return report.failed and call.excinfo is not None and call.excinfo.errisinstance(pytest.fail.Exception) \
        and str(call.excinfo.value).startswith(GATE_FAILED)
