"""Progress of long tests on the controller's terminal: what is being computed, items done / total, rate
and ETA while a test runs (a live status on a terminal), and one line per test that counted items.

Counting, in any process (no-ops unless the plugin listens: without a tracker ``task`` hands back a shared
task whose ``advance`` does nothing)::

    from clip_robustness.plugins import progress

    with progress.task("embedded:rn-clip world:test corruption=fog;severity=3", total=50) as bar:
        bar.advance(32)               # 32 images computed; any thread may call it (decode workers do)
        bar.advance(18, cached=True)  # 18 read from the cache: done, but not part of the rate

    for cell in progress.each(cells, "embedded:rn-clip world:test corruption grid", unit="cells"):
        ...                           # a task of len(cells), advanced after each loop body

Tasks nest (a test's loop over cells around each cell's embeddings): the ETA is the outermost task's that has
a total, from the fraction done of the tasks inside it (:func:`fraction`). Only the test's own thread opens
tasks (one opened on another thread is idle); any thread may advance one.

How the numbers reach the controller's terminal:

- The per-test line travels on the test's teardown report (``user_properties``, as the report's rows do), so
  a serial and an ``-n N`` run print the same lines; xdist ships reports, nothing else, to the controller.
- The live status: xdist has no channel for messages during a test (a worker's events are a fixed set, and
  report hooks fire only when a phase ends, so a 10-minute test would say nothing until its end), so each
  worker rewrites a small JSON file ``<folder>/<worker id>.json`` (a thread, every PUBLISH_EVERY_S when its
  counts moved) in a temporary folder the controller makes and hands over in ``workerinput`` (not the
  report's staging folder: this is live state with its own lifetime, wanted also when no report is written).
  A controller thread reads the files every REDRAW_EVERY_S; a serial run reads the in-process tracker.
- Drawing: tqdm's bars redraw their own line from the process that counts, but here the counting happens in
  captured test code or in workers without a terminal, and pytest itself writes on the current line (dots,
  ``[ 42%]``); pytest's live logging writes through the terminal reporter with capture suspended, from the
  test's thread, which a worker cannot do. So a controller thread draws the status on the lines below
  pytest's cursor (save cursor, index down, restore: pytest's line stays as it is), with its own handle on the
  terminal (capture redirects the terminal reporter's stream during a serial test), and erases it around the
  hooks in which the terminal reporter writes.

The live status is drawn only on a terminal (stdout a tty, TERM not dumb), not under ``-q``, and in a serial
run only with output capture on (under ``-s`` a test prints where the status would be). The per-test lines are
printed unless ``-qq``: in a CI log they are the progress.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import pytest

T = TypeVar("T")
PROGRESS_KEY = "rb_progress"  # the per-test summary on the teardown report's user_properties
PUBLISH_EVERY_S = 0.2  # a worker rewrites its progress file this often, when its counts moved
REDRAW_EVERY_S = 0.5  # the controller redraws the live status this often
FOLDER_INPUT = "rb_progress"  # workerinput key: the folder of the workers' progress files


class Task:
    """One counted loop of ``total`` items (None: unknown) of ``unit``; ``advance`` is thread-safe."""

    def __init__(self, tracker: "Tracker", desc: str, total: int | None, unit: str) -> None:
        self.tracker, self.desc, self.total, self.unit = tracker, desc, total, unit
        self.done = self.cached = 0
        self.started = time.time()

    def advance(self, n: int = 1, *, cached: bool = False) -> None:
        self.tracker.add(self, n, cached)

    def state(self) -> dict[str, Any]:
        return {"desc": self.desc, "unit": self.unit, "total": self.total, "done": self.done,
                "cached": self.cached, "started": self.started}


class _IdleTask:
    """What ``task`` hands out when nobody listens: counting costs one method call."""

    done = cached = 0

    def advance(self, n: int = 1, *, cached: bool = False) -> None:
        pass


IDLE = _IdleTask()


class Tracker:
    """This process's counts: the running test, its open tasks, its items per unit. One test runs at a time
    in a process; tasks may be advanced from other threads (decode workers), hence the lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.version = 0  # bumped by every change: a worker's Publisher writes a new file when it moved
        self.test: str | None = None
        self.thread: int | None = None  # the running test's thread: only it opens tasks
        self.started = 0.0
        self.tasks: list[Task] = []
        self.units: dict[str, dict[str, float]] = {}  # unit -> done, cached, since (first task of the unit)

    def start_test(self, nodeid: str) -> None:
        with self.lock:
            self.test, self.thread, self.started, self.units = nodeid, threading.get_ident(), time.time(), {}
            self.version += 1

    def summary(self) -> dict[str, Any] | None:
        """The running test's counts (None when it counted nothing): the per-test line's data."""
        with self.lock:
            if self.test is None or not any(u["done"] for u in self.units.values()):
                return None
            now = time.time()
            return {"test": self.test, "seconds": round(now - self.started, 3),
                    "units": {k: {"done": int(u["done"]), "cached": int(u["cached"]),
                                  "seconds": round(now - u["since"], 3)} for k, u in self.units.items()}}

    def end_test(self) -> None:
        with self.lock:  # a task a failed test left open (a generator not closed yet) ends with it
            self.test, self.thread, self.units, self.tasks = None, None, {}, []
            self.version += 1

    def open(self, desc: str, total: int | None, unit: str) -> Task | None:
        """A new innermost task; None on a thread other than the test's (a render inside a decode worker):
        the status shows the test's own nesting, and that thread's work is counted by the task around it."""
        if self.thread is not None and threading.get_ident() != self.thread:
            return None
        task = Task(self, desc, total, unit)
        with self.lock:
            self.tasks.append(task)
            self.units.setdefault(unit, {"done": 0, "cached": 0, "since": task.started})
            self.version += 1
        return task

    def close(self, task: Task) -> None:
        with self.lock:
            if task in self.tasks:  # a task a failed test left open may close after end_test
                self.tasks.remove(task)
            self.version += 1

    def add(self, task: Task, n: int, cached: bool) -> None:
        with self.lock:
            task.done += n
            unit = self.units.setdefault(task.unit, {"done": 0, "cached": 0, "since": task.started})
            unit["done"] += n
            if cached:
                task.cached += n
                unit["cached"] += n
            self.version += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"test": self.test, "tasks": [t.state() for t in self.tasks],
                    "units": {k: dict(u) for k, u in self.units.items()}}


_TRACKER: Tracker | None = None  # installed by ProgressPlugin while a pytest session runs in this process


@contextmanager
def task(desc: str, total: int | None = None, unit: str = "images") -> Iterator[Task | _IdleTask]:
    """Count a loop: ``desc`` says what is computed (model, dataset, condition), ``total`` how many ``unit``."""
    tracker = _TRACKER
    if tracker is None:
        yield IDLE
        return
    counted = tracker.open(desc, total, unit)
    if counted is None:
        yield IDLE
        return
    try:
        yield counted
    finally:
        tracker.close(counted)


def each(items: Sequence[T], desc: str, unit: str) -> Iterator[T]:
    """``for item in each(items, desc, unit)``: a task of ``len(items)``, advanced after each item's loop body."""
    with task(desc, len(items), unit) as counted:
        for item in items:
            yield item
            counted.advance()


def install(tracker: Tracker | None) -> Tracker | None:
    """Make ``tracker`` this process's (None: nobody listens); returns the one it replaces."""
    global _TRACKER
    previous, _TRACKER = _TRACKER, tracker
    return previous


# --- arithmetic (pure) -------------------------------------------------------------------------------------

def fraction(tasks: list[dict[str, Any]]) -> float | None:
    """Fraction done of the outermost task that has a total, the open tasks inside it counting as part of
    its next item: cells 12/95 while the 13th cell's images are 25/50 -> (12 + 25/50) / 95. A task of
    unknown length says nothing about the one around it. None when no task has a total."""
    inner, result = 0.0, None
    for t in reversed(tasks):
        if t["total"]:
            inner = result = min(1.0, (t["done"] + inner) / t["total"])
        else:
            inner = 0.0
    return result


def eta_seconds(tasks: list[dict[str, Any]], now: float) -> float | None:
    """Time left: the outermost task with a total took ``elapsed`` for its fraction done ``f``, so the rest
    takes ``elapsed * (1 - f) / f`` at the same pace. None before anything is done. (Cache hits make the
    pace look faster while they last.)"""
    outer = next((t for t in tasks if t["total"]), None)
    done = fraction(tasks)
    if outer is None or not done:
        return None
    return max(0.0, now - outer["started"]) * (1.0 - done) / done


def per_second(count: float, seconds: float) -> float | None:
    """Items per second, None when there is no rate to speak of (nothing counted, or no time elapsed)."""
    return count / seconds if count > 0 and seconds > 0 else None


def format_duration(seconds: float) -> str:
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_rate(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 9.95 else f"{rate:.2g}"


def short_name(nodeid: str | None) -> str:
    """The node id without its file: ``test_corruption2d_world[embedded:rn-clip]``."""
    return (nodeid or "").split("::", 1)[-1]


def busiest_rate(units: dict[str, dict[str, float]], seconds: Callable[[dict[str, float]], float]) \
        -> tuple[str, float] | None:
    """(unit, items per second) of the unit with the most computed (not cached) items: the per-test line and
    the live status both quote it, so a loop of 95 cells around 4,750 images reads as images per second."""
    if not units:
        return None
    unit, most = max(units.items(), key=lambda kv: kv[1]["done"] - kv[1]["cached"])
    rate = per_second(most["done"] - most["cached"], seconds(most))
    return (unit, rate) if rate else None


def summary_line(summary: dict[str, Any]) -> str:
    """``  test_x[m] 95 cells, 4,750 images (2,000 from cache) in 41 s (67 images/s)``: the test's time; the
    rate is over the computed items, from the unit's first task to the test's end (a model loading in the
    test's setup is not part of it)."""
    units = summary["units"]
    counts = ", ".join(f"{u['done']:,} {unit}" + (f" ({u['cached']:,} from cache)" if u["cached"] else "")
                       for unit, u in units.items() if u["done"])
    line = f"  {short_name(summary['test'])} {counts} in {format_duration(summary['seconds'])}"
    rate = busiest_rate(units, lambda u: u["seconds"])
    return line + (f" ({format_rate(rate[1])} {rate[0]}/s)" if rate else "")


def status_line(state: dict[str, Any], now: float, worker: str | None = None) -> str | None:
    """One process's live status, most telling first (a narrow terminal cuts the end): the test, each open
    task's done / total, the rate (items per second since the unit's first task), the ETA, then what the
    innermost task computes (model, dataset, condition). None when no task is open."""
    tasks = state.get("tasks") or []
    if not tasks:
        return None
    parts = [f"{t['done']:,}" + (f"/{t['total']:,}" if t["total"] else "") + f" {t['unit']}" for t in tasks]
    rate = busiest_rate(state.get("units") or {}, lambda u: now - u["since"])
    if rate:
        parts.append(f"{format_rate(rate[1])} {rate[0]}/s")
    eta = eta_seconds(tasks, now)
    if eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    prefix = f"[{worker}] " if worker else ""
    return f"{prefix}{short_name(state.get('test'))}: " + ", ".join(parts) + f" | {tasks[-1]['desc']}"


# --- the live status ---------------------------------------------------------------------------------------

def redraw_sequence(previous: int, lines: list[str]) -> str:
    """Terminal codes that replace the ``previous`` status lines below the cursor by ``lines`` and leave the
    cursor where it was. Index down (ESC D) scrolls at the screen's bottom and reverse index (ESC M) goes back
    up, both keeping the column: room is made before the cursor is saved (ESC 7) and restored (ESC 8)."""
    k = max(previous, len(lines))
    if not k:
        return ""
    body = "".join("\x1bD\r\x1b[2K" + (lines[i] if i < len(lines) else "") for i in range(k))
    return "\x1bD" * k + "\x1bM" * k + "\x1b7" + body + "\x1b8"


class LiveView:
    """The status lines below pytest's cursor: redrawn by a thread, erased while pytest writes (``paused``)."""

    def __init__(self, fd: int, read: Callable[[], list[tuple[str | None, dict[str, Any]]]],
                 flush: Callable[[], None], markup: bool) -> None:
        self.fd, self.read, self.flush, self.markup = fd, read, flush, markup
        self.lock = threading.RLock()
        self.shown = 0  # status lines now on the screen
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="robustness-progress", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        with self.lock:
            self._write([])
        os.close(self.fd)

    @contextmanager
    def paused(self) -> Iterator[None]:
        with self.lock:
            self._write([])
            try:
                yield
            finally:
                self.flush()
                self.redraw()

    def redraw(self) -> None:
        with self.lock:
            if self.stopped.is_set():
                return
            now, width = time.time(), self._width()
            lines = [line for worker, state in self.read() if (line := status_line(state, now, worker))]
            self._write([line if len(line) < width else line[:width - 4] + "..." for line in lines])

    def _run(self) -> None:
        while not self.stopped.wait(REDRAW_EVERY_S):
            self.redraw()

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.fd).columns
        except OSError:
            return 80

    def _write(self, lines: list[str]) -> None:
        if self.markup:
            lines = [f"\x1b[36m{line}\x1b[0m" for line in lines]
        codes = redraw_sequence(self.shown, lines)
        try:
            if codes:
                os.write(self.fd, codes.encode("utf-8", "replace"))
            self.shown = len(lines)
        except OSError:  # the terminal went away: the status is a convenience, the run goes on without it
            self.stopped.set()


class Publisher:
    """An xdist worker's progress, rewritten whole (rename: the controller never reads half a file) every
    PUBLISH_EVERY_S when it changed, by a thread: counting stays a few integer additions, and a count made just
    before a long stall still reaches the controller."""

    def __init__(self, tracker: Tracker, path: Path) -> None:
        self.tracker, self.path = tracker, path
        self.written = -1
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="robustness-progress-publisher", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self.stopped.wait(PUBLISH_EVERY_S):
            if self.tracker.version != self.written:
                self.written = self.tracker.version
                self._write(self.tracker.snapshot())

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.path)
        except OSError:  # the status is a convenience: a full disk never fails a test
            pass


def read_folder(folder: Path) -> list[tuple[str | None, dict[str, Any]]]:
    """The workers' progress files, by worker id."""
    states = []
    for path in sorted(folder.glob("*.json")):
        try:
            states.append((path.stem, json.loads(path.read_text())))
        except (OSError, ValueError):  # a worker replacing its file right now: next time
            continue
    return states


# --- the plugin --------------------------------------------------------------------------------------------

class ProgressPlugin:
    """Registered in every process (clip_robustness.plugins.robustness): counts per test there; on the
    controller, prints the per-test lines and draws the live status."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        workerinput = getattr(config, "workerinput", None)
        folder = workerinput.get(FOLDER_INPUT) if workerinput is not None else None
        self.tracker = Tracker()
        self.previous = install(self.tracker)
        self.publisher = Publisher(self.tracker, Path(folder) / f"{workerinput['workerid']}.json") if folder else None
        self.folder: Path | None = None  # controller under xdist, with a live status: the workers' files
        self.view: LiveView | None = None

    def pytest_unconfigure(self) -> None:
        install(self.previous)
        if self.publisher is not None:
            self.publisher.stop()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Any:
        self.tracker.start_test(item.nodeid)
        try:
            return (yield)
        finally:
            self.tracker.end_test()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Any:
        report = yield
        if call.when == "teardown":
            summary = self.tracker.summary()
            if summary is not None:
                report.user_properties.append((PROGRESS_KEY, json.dumps(summary)))
        return report

    # controller only from here

    def _distributed(self) -> bool:
        return getattr(self.config.option, "dist", "no") != "no" and not hasattr(self.config, "workerinput")

    def _live(self) -> bool:
        """Whether to draw the live status (see the module docstring)."""
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        return (tr is not None and not hasattr(self.config, "workerinput") and bool(tr.isatty())
                and os.environ.get("TERM") != "dumb" and self.config.get_verbosity() >= 0
                and (self._distributed() or self.config.getoption("capture", "fd") != "no"))

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self._live():
            if self.folder is None:
                self.folder = Path(tempfile.mkdtemp(prefix="rb-progress-"))
            node.workerinput[FOLDER_INPUT] = str(self.folder)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Any:
        self.view = self._start_view()
        try:
            return (yield)
        finally:
            if self.view is not None:
                self.view.stop()
                self.view = None

    def _start_view(self) -> LiveView | None:
        if not self._live() or (self._distributed() and self.folder is None):
            return None
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        try:  # capture is suspended between tests: sys.stdout is the terminal the reporter writes to
            fd = os.dup(sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            return None
        if not os.isatty(fd):
            os.close(fd)
            return None
        folder = self.folder
        read = (lambda: read_folder(folder)) if folder is not None else (lambda: [(None, self.tracker.snapshot())])
        view = LiveView(fd, read, tr.flush, markup=bool(tr.hasmarkup))
        view.start()
        return view

    @contextmanager
    def _pytest_writes(self) -> Iterator[None]:
        if self.view is None:
            yield
        else:
            with self.view.paused():
                yield

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logstart(self) -> Any:
        with self._pytest_writes():
            return (yield)

    @pytest.hookimpl(optionalhook=True, wrapper=True)
    def pytest_testnodedown(self) -> Any:
        with self._pytest_writes():
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Any:
        with self._pytest_writes():
            result = yield
            if report.when == "teardown" and not hasattr(self.config, "workerinput"):
                for key, value in report.user_properties:
                    if key == PROGRESS_KEY:
                        self._write_summary(json.loads(value))
            return result

    def _write_summary(self, summary: dict[str, Any]) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is None or self.config.get_verbosity() < -1:
            return
        tw = getattr(tr, "_tw", None)  # the reporter's writer knows whether pytest's line is open
        if tr.currentfspath or (tw is not None and tw.width_of_current_line):
            tr.write("\n")
        tr.write(summary_line(summary), flush=True)
        if tr.showfspath or self.config.get_verbosity() > 0:
            # pytest starts its next line itself here (a file path, a verbose line, or "[ 42%]" first): left
            # open, as pytest leaves its verbose lines ("-2": its mark for that)
            tr.currentfspath = -2
        else:  # xdist's dots: appended to whatever line is open
            tr.write("\n", flush=True)
            tr.currentfspath = None
