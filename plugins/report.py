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
import platform
import subprocess
import time
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from fixtures._io import atomic_write, atomic_write_text
from plugins.config import RunConfig

ROW_KEY, MODEL_KEY, CACHE_KEY = "rb_row", "rb_model", "rb_cache"
ROW_FIELDS = ("property", "model", "dataset", "condition", "metric", "value", "ci", "n",
              "higher_is_better", "gate", "test", "samples", "extra")
PACKAGES = ("torch", "open_clip_torch", "numpy", "scipy", "scikit-learn", "pytest", "pytest-xdist")


def save_samples(report_dir: Path, arrays: dict[str, np.ndarray]) -> str:
    """Write per-sample arrays once per content; returns the path relative to ``report_dir``."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in sorted(arrays.items())})
    data = buffer.getvalue()
    # Name by the arrays' content (not the zip bytes, which hold timestamps) so identical outputs share a file.
    digest = hashlib.sha256()
    for key, value in sorted(arrays.items()):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    rel = f"samples/{digest.hexdigest()[:20]}.npz"
    path = Path(report_dir) / rel
    if not path.exists():
        atomic_write(path, lambda handle: handle.write(data))
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
    return sorted(rows, key=lambda r: (r["property"], r["model"], r["dataset"], r["condition"], r["metric"]))


class ReportSession:
    """Controller-side aggregator: collects rows, writes the JSON and HTML at session end."""

    def __init__(self, config: RunConfig, rootdir: Path, pytest_config: Any) -> None:
        self.config = config
        self.rootdir = rootdir
        self.pytest_config = pytest_config
        self.rows: list[dict[str, Any]] = []
        self.models: dict[str, dict[str, Any]] = {}
        self.cache = {"hits": 0, "misses": 0}
        self.started = time.time()
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.paths: dict[str, Path] = {}

    @property
    def report_dir(self) -> Path:
        return self.config.report_dir if self.config.report_dir.is_absolute() else self.rootdir / self.config.report_dir

    def pytest_runtest_logreport(self, report: Any) -> None:
        for key, value in getattr(report, "user_properties", ()):
            # item.user_properties are copied onto the call *and* teardown reports: take rows from "call" only.
            if key == ROW_KEY and report.when == "call":
                self.rows.append(json.loads(value))
            elif key == MODEL_KEY and report.when == "call":
                info = json.loads(value)
                self.models.setdefault(info["id"], info["info"])
            elif key == CACHE_KEY and report.when == "teardown":
                counts = json.loads(value)
                self.cache["hits"] += counts["hits"]
                self.cache["misses"] += counts["misses"]

    def build(self) -> dict[str, Any]:
        device = self.config.device
        run = {
            "config": self.config.to_json(),
            "seed": self.config.seed,
            "versions": package_versions(),
            "device": device,
            "platform": platform.platform(),
            "git_commit": git_commit(self.rootdir),
            "started_at": self.started_at,
            "wall_time_s": round(time.time() - self.started, 3),
            "cache": dict(self.cache),
            "models": dict(sorted(self.models.items())),
        }
        return {"run": run, "results": sort_rows(self.rows)}

    def pytest_sessionfinish(self, session: Any, exitstatus: int) -> None:
        if not self.rows:
            return  # nothing measured (e.g. only the harness's own tests ran): leave earlier reports alone
        data = self.build()
        out = self.report_dir
        json_path = out / "robustness.json"
        atomic_write_text(json_path, json.dumps(data, indent=1, sort_keys=False, allow_nan=True) + "\n")
        self.paths["json"] = json_path
        from plugins.html_report import write_html

        html_path = out / "robustness.html"
        write_html(data, html_path)
        self.paths["html"] = html_path

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
        tr.write_line(f"embedding cache: {self.cache['hits']} hits, {self.cache['misses']} misses")
        for kind, path in self.paths.items():
            tr.write_line(f"{kind}: {path}")
