"""A second process that draws a report's figures while this one draws them too.

Drawing is most of a cold report's time (about 0.1 s a figure with matplotlib, 60 to 130 figures) and it runs
on one core. With a figure cache, every figure is its own cache entry, computed under the entry's file lock
(``clip_robustness.fixtures.cache``), so two processes share the work without more coordination: this process
draws the page from its first view, the helper from its last, and each reads from the cache what the other
already drew; where they meet, one waits for the other's lock on at most one figure. The page's bytes are the
same with or without a helper (a figure's salt and key depend only on its own view).

The helper is a subprocess running ``draw_ahead`` rather than a ``multiprocessing`` child: spawning re-imports the
caller's main script, which a script calling ``pytest.main()`` without a ``__main__`` guard would run again. It
reads its inputs from a pickle file, writes nothing but cache entries and prints nothing (whatever goes wrong
there, this process draws that figure itself and the page says what went wrong). It is killed as soon as this
process has every figure: by then the helper can only be starting up or reading entries this process wrote (a
figure it would draw, this one already drew; cache writes are atomic). It starts only with a second core, and
only once this process has drawn a few figures itself, so an unchanged report (every figure cached) and a small
one start nothing.
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from clip_robustness.plugins.state import available_cores

ENTRY = "clip_robustness.plugins.html.draw_ahead"  # the helper process's module (it imports the page; this does not)
START_AFTER = 3  # figures this process draws before it starts a helper: ~0.3 s, more than a small report needs


class DrawingHelper:
    """``before_drawing`` (a ``FigureRenderer`` hook) starts the helper on ``views`` (the page's views in the
    order it should draw them); ``stop`` kills it and removes its inputs."""

    def __init__(self, report: dict[str, Any], report_dir: Path, cache_dir: Path, views: list[str]) -> None:
        self._inputs = {"report": report, "report_dir": str(report_dir), "cache_dir": str(cache_dir),
                        "views": list(views)}
        self._process: subprocess.Popen | None = None
        self._folder: Path | None = None
        self._tried = False

    def before_drawing(self, drawn_here: int) -> None:
        if drawn_here >= START_AFTER and not self._tried:
            self._tried = True
            self._start()

    def _start(self) -> None:
        if available_cores() < 2:  # it would only take turns with this process
            return
        folder = Path(tempfile.mkdtemp(prefix="rb-figures-"))
        try:
            with open(folder / "inputs.pickle", "wb") as f:
                pickle.dump(self._inputs, f, protocol=pickle.HIGHEST_PROTOCOL)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # this process's imports
            self._process = subprocess.Popen([sys.executable, "-m", ENTRY, str(folder)], stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        except (OSError, pickle.PicklingError, TypeError, AttributeError):  # this process draws every figure
            shutil.rmtree(folder, ignore_errors=True)
            return
        self._folder = folder

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
