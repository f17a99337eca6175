"""Start-up stays light: `pytest --help` and collection never import torch or open_clip (issue 14)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip")
PROBE = """
import sys

def pytest_unconfigure(config):
    print("HEAVY-MODULES=" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("args", [
    ["--help"],
    ["--collect-only", "-q", "robustness_tests"],
    ["--collect-only", "-q", "robustness_tests", "--model", "ViT-B-32:random"],
], ids=["help", "collect", "collect-random-arch"])
def test_startup_imports_neither_torch_nor_open_clip(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "rb_probe.py").write_text(PROBE.format(heavy=HEAVY), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "rb_probe", "-p", "no:cacheprovider", *args,
         "--report-dir", str(tmp_path / "rep"), "--embedding-cache", "off"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("HEAVY-MODULES="))
    assert line == "HEAVY-MODULES=", f"start-up imported {line.partition('=')[2]}"


def test_architectures_read_from_config_files_match_open_clip() -> None:
    """The torch-free architecture list (config JSONs) is open_clip's own registry, zoo included."""
    import open_clip

    from clip_robustness.fixtures import zoo
    from clip_robustness.fixtures.models import config_file_architectures

    zoo.register_configs()
    assert sorted(config_file_architectures()) == sorted(open_clip.list_models())


def test_template_sets_are_built_on_first_use() -> None:
    from clip_robustness.fixtures import templates

    assert templates.check_templates("openai") is None
    name, sets = templates.resolve_templates("simple")
    assert (name, sets) == ("simple", templates.TEMPLATE_SETS["simple"]) and all("{c}" in t for t in sets)
    with pytest.raises(ValueError, match="unknown template set 'nope'"):
        templates.check_templates("nope")


def test_a_path_after_a_space_that_would_move_the_root_folder_is_refused(tmp_path: Path) -> None:
    """pytest chooses its root folder before it knows the plugin's options: `--report-dir /x` made /x the
    root, so the run lost the project's settings and collected the wrong tests. `--report-dir=/x` is right."""
    (tmp_path / "rep").mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                               "--embedding-cache=off", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})

    refused = run("--report-dir", str(tmp_path / "rep"))
    assert refused.returncode == pytest.ExitCode.USAGE_ERROR, refused.stdout[-2000:]
    assert (f"--report-dir {tmp_path / 'rep'}: pytest took this path for a test path when it chose the run's root "
            "folder (") in refused.stderr  # the folder itself, or the common ancestor of it and the repository
    assert (f"), before it knew --report-dir takes a value, so the run would miss this project's settings "
            f"(pyproject.toml); write it as --report-dir={tmp_path / 'rep'}") in refused.stderr
    accepted = run(f"--report-dir={tmp_path / 'rep'}")
    assert accepted.returncode == 0 and "robustness_tests/test_accuracy.py" in accepted.stdout
    assert run("robustness_tests/test_accuracy.py", "--report-dir", str(tmp_path / "rep")).returncode == 0
