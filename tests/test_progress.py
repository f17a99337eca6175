"""Progress on the controller's terminal: the ETA / rate arithmetic, the counting API, the per-test lines of a
non-interactive run (serial and -n 2), and the live status on a pseudo-terminal (serial and -n 2)."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

from clip_robustness.plugins import progress
from clip_robustness.plugins.progress import (Tracker, eta_seconds, format_duration, format_rate, fraction,
                                              per_second, redraw_sequence, status_line, summary_line)


def _task(done, total, unit="images", cached=0, started=0.0, desc="d"):
    return {"desc": desc, "unit": unit, "total": total, "done": done, "cached": cached, "started": started}


def test_fraction_counts_the_open_inner_task_as_part_of_the_next_outer_item():
    cells = _task(12, 95, "cells", started=0.0)
    images = _task(25, 50, started=90.0)
    assert fraction([cells, images]) == pytest.approx(12.5 / 95)
    assert fraction([images]) == 0.5
    # a loop of unknown length says nothing about the one around it, nor has a fraction of its own
    assert fraction([cells, _task(7, None)]) == pytest.approx(12 / 95)
    assert fraction([_task(7, None)]) is None
    assert fraction([]) is None
    assert fraction([_task(60, 50)]) == 1.0  # over-counted: capped


def test_eta_is_the_outer_task_pace_over_what_is_left():
    cells, images = _task(12, 95, "cells", started=0.0), _task(25, 50, started=90.0)
    # 100 s for 12.5 of 95 cells: 82.5 cells left at 8 s a cell
    assert eta_seconds([cells, images], now=100.0) == pytest.approx(660.0)
    assert eta_seconds([_task(30, 120, started=10.0)], now=40.0) == pytest.approx(90.0)
    assert eta_seconds([_task(0, 120, started=10.0)], now=40.0) is None  # nothing done: no pace yet
    assert eta_seconds([_task(5, None)], now=40.0) is None
    assert eta_seconds([_task(120, 120, started=10.0)], now=40.0) == 0.0


def test_rate_and_formats():
    assert per_second(12_000, 41.0) == pytest.approx(292.68, abs=0.01)
    assert per_second(0, 41.0) is None and per_second(5, 0.0) is None
    assert [format_rate(r) for r in (292.68, 12_345.6, 9.96, 2.34, 0.05)] == ["293", "12,346", "10", "2.3", "0.05"]
    assert [format_duration(s) for s in (0.04, 4.12, 41.4, 59.4, 59.6, 185, 3599.4, 3725)] == [
        "0.0 s", "4.1 s", "41 s", "59 s", "1 min 00 s", "3 min 05 s", "59 min 59 s", "1 h 02 min"]


def test_summary_line_quotes_the_computed_rate_of_the_busiest_unit():
    units = {"cells": {"done": 95, "cached": 0, "seconds": 40.0},
             "images": {"done": 4_750, "cached": 2_000, "seconds": 25.0}}
    line = summary_line({"test": "robustness_tests/test_c.py::test_grid[embedded:rn-clip]", "seconds": 41.0,
                         "units": units})
    # 2,750 computed images in the 25 s from the first image task to the end (the test's first 16 s loaded the
    # model); the 2,000 cached ones are counted but not part of the rate
    assert line == "  test_grid[embedded:rn-clip] 95 cells, 4,750 images (2,000 from cache) in 41 s (110 images/s)"
    warm = {"images": {"done": 500, "cached": 500, "seconds": 0.4}}
    assert summary_line({"test": "t.py::test_w", "seconds": 0.5, "units": warm}) == \
        "  test_w 500 images (500 from cache) in 0.5 s"


def test_status_line_puts_counts_rate_and_eta_before_what_is_computed():
    state = {"test": "t.py::test_grid[m]",
             "tasks": [_task(12, 95, "cells", desc="m grid"), _task(25, 50, started=90.0, desc="m world:test fog")],
             "units": {"cells": {"done": 12, "cached": 0, "since": 0.0},
                       "images": {"done": 625, "cached": 25, "since": 0.0}}}
    assert status_line(state, 100.0, "gw1") == \
        "[gw1] test_grid[m]: 12/95 cells, 25/50 images, 6 images/s, ETA 11 min 00 s | m world:test fog"
    assert status_line({"test": "t.py::test_idle", "tasks": [], "units": {}}, 100.0) is None


def test_counting_from_threads_with_cache_hits_and_nested_loops():
    tracker = Tracker()
    previous = progress.install(tracker)  # this session's own tracker, put back below
    assert previous is not None
    try:
        tracker.start_test("t.py::test_x")
        for cell in progress.each(["fog", "snow"], "m grid", unit="cells"):
            with progress.task(f"m world:test {cell}", 400) as bar:
                threads = [threading.Thread(target=lambda: [bar.advance(1) for _ in range(50)]) for _ in range(6)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                bar.advance(100, cached=True)
                assert [t["done"] for t in tracker.snapshot()["tasks"]] == [0 if cell == "fog" else 1, 400]
        summary = tracker.summary()
        assert {k: (u["done"], u["cached"]) for k, u in summary["units"].items()} == {"cells": (2, 0),
                                                                                    "images": (800, 200)}
        assert 0 <= summary["units"]["images"]["seconds"] <= summary["units"]["cells"]["seconds"] <= summary["seconds"]
        assert tracker.snapshot()["tasks"] == []

        opened = []  # a task opened on another thread than the test's is idle: it neither shows nor counts
        worker = threading.Thread(target=lambda: opened.append(progress.task("render", 10).__enter__()))
        worker.start()
        worker.join()
        assert opened == [progress.IDLE]
        tracker.end_test()
        assert tracker.summary() is None
    finally:
        progress.install(previous)


def test_nobody_listening_costs_a_method_call():
    previous = progress.install(None)
    try:
        with progress.task("m world:test clean", 10) as bar:
            bar.advance(10)
        assert bar is progress.IDLE and bar.done == 0
    finally:
        progress.install(previous)


def screen(stream: str) -> tuple[list[str], tuple[int, int]]:
    """The text a VT100-like terminal shows for ``stream`` (rows never scroll off), and the cursor: enough
    of a terminal to check that the status lines vanish and leave pytest's lines as they were."""
    rows: list[list[str]] = [[]]
    r = c = 0
    saved = (0, 0)
    i = 0
    while i < len(stream):
        ch = stream[i]
        if ch == "\x1b":
            csi = re.match(r"\x1b\[([0-9;?]*)([@-~])", stream[i:])
            osc = re.match(r"\x1b\].*?(\x1b\\|\x07)", stream[i:], re.S)
            if csi:
                if csi.group(2) == "K":
                    rows[r] = [] if csi.group(1) == "2" else rows[r][:c]
                i += csi.end()
                continue
            if osc:
                i += osc.end()
                continue
            code = stream[i + 1]
            if code == "7":
                saved = (r, c)
            elif code == "8":
                r, c = saved
            elif code == "D":
                r += 1
            elif code == "M":
                r -= 1
            i += 2
        elif ch == "\r":
            c, i = 0, i + 1
        elif ch == "\n":
            r, i = r + 1, i + 1
        else:
            rows[r].extend(" " * (c + 1 - len(rows[r])))
            rows[r][c] = ch
            c, i = c + 1, i + 1
        rows.extend([] for _ in range(r + 1 - len(rows)))
    return ["".join(row).rstrip() for row in rows], (r, c)


def test_status_lines_are_drawn_below_the_cursor_and_erased_without_a_trace():
    before = "header\r\nt.py .."
    draw = redraw_sequence(0, ["[gw0] a", "[gw1] b"])
    assert screen(before + draw) == (["header", "t.py ..", "[gw0] a", "[gw1] b"], (1, 7))
    redrawn = draw + redraw_sequence(2, ["[gw0] c"])
    assert screen(before + redrawn) == (["header", "t.py ..", "[gw0] c", ""], (1, 7))
    rows, cursor = screen(before + redrawn + redraw_sequence(1, []) + ".")
    assert [row for row in rows if row] == ["header", "t.py ..."] and cursor == (1, 8)
    assert redraw_sequence(0, []) == ""


COUNTING_TESTS = '''
import threading
import time

from clip_robustness.plugins import progress


def test_embeds():
    with progress.task("m world:test clean", 300) as bar:
        time.sleep(0.02)  # a rate needs time to pass
        bar.advance(200)
        bar.advance(100, cached=True)


def test_grid():
    for cell in progress.each(["fog", "snow"], "m grid", unit="cells"):
        with progress.task(f"m world:test corruption={cell}", 50) as bar:
            worker = threading.Thread(target=bar.advance, args=(50,))
            worker.start()
            worker.join()
            time.sleep(0.02)


def test_counts_nothing():
    pass
'''

SUMMARY_LINES = [
    "  test_embeds 300 images (100 from cache) in * s (* images/s)*",
    "  test_grid 2 cells, 100 images in * s (* images/s)*",
]


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_non_interactive_run_prints_one_line_per_counting_test(pytester, run_harness, workers):
    pytester.makepyfile(test_counting=COUNTING_TESTS)
    result = run_harness(*workers)
    result.assert_outcomes(passed=3)
    for line in SUMMARY_LINES:
        result.stdout.fnmatch_lines([line])
    assert "test_counts_nothing" not in result.stdout.str()
    assert "\x1b" not in result.stdout.str()  # not a terminal: no live status
    quiet = run_harness(*workers, "-qq")
    assert quiet.ret == 0
    assert "test_embeds" not in quiet.stdout.str()


SLOW_TEST = '''
import time

from clip_robustness.plugins import progress


def test_slow():
    with progress.task("m world:test corruption=fog", 50) as bar:
        bar.advance(25)
        time.sleep(1.6)
        bar.advance(25)
'''


def run_on_terminal(pytester: pytest.Pytester, *args: str, timeout: float = 300) -> str:
    """pytest in pytester's folder with stdout on a pseudo-terminal of 160 columns; what the terminal got."""
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\naddopts = ['--strict-markers']\n")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "160", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider",
                             "--embedding-cache", str(pytester.path / ".emb"), *args],
                            cwd=pytester.path, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
        proc.wait(timeout=30)
    return out.decode("utf-8", "replace")


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_live_status_on_a_terminal_is_drawn_then_leaves_no_trace(pytester, workers):
    pytester.makepyfile(test_live=SLOW_TEST)
    raw = run_on_terminal(pytester, *workers)
    worker = r"\[gw[01]\] " if workers else ""
    drawn = re.findall(worker + r"test_slow: 25/50 images, [\d.,]+ images/s, ETA [\d.]+ s \| m world:test "
                       r"corruption=fog", raw)
    assert len(drawn) >= 1, raw
    rows, _ = screen(raw)
    assert not any("ETA" in row for row in rows), rows
    assert any(re.fullmatch(r"  test_slow 50 images in [\d.]+ s \(\d+ images/s\).*", row) for row in rows), rows
    assert any(re.search(r"1 passed", row) for row in rows), rows
    if not workers:  # -q: the per-test line only (the same check decides for -n)
        quiet = run_on_terminal(pytester, "-q")
        assert "ETA" not in quiet and "test_slow 50 images in" in quiet
