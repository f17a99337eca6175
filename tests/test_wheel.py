"""The wheel, end to end, as a model team uses it: built from this repository, installed into a fresh
virtual environment, run from the team's own repository (which has its own ``plugins`` package, its own
safetensors checkpoint, its own property test and gates).

The fresh environment gets the wheel by ``pip install --no-deps``; its dependencies (torch, open_clip, ...)
are not downloaded again (minutes, and the network) but reached through one ``.pth`` line naming a folder
of symlinks to this environment's site-packages entries, *without* the editable install of this
repository (its ``__editable__`` finder and ``.pth``, and its ``clip_robustness_gate`` metadata), whose
finder would map ``clip_robustness`` back onto this checkout. A plain path line in a ``.pth`` file adds the
folder to ``sys.path`` after the fresh site-packages and runs no ``.pth`` file found inside it. So the test
asserts that ``clip_robustness`` and its metadata come from the fresh site-packages, and checks the wheel's
declared requirements against what that environment imports (what ``pip check`` would say of it).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

DIST = "clip-robustness-gate"
DIST_INFO = "clip_robustness_gate-0.1.0.dist-info"
PACKAGE = "clip_robustness"
GENERIC_NAMES = ("plugins", "fixtures", "robustness_tests", "conftest")  # a user's repository has its own
# left out of the copy the wheel is built from: version control, environments, caches, earlier outputs
NOT_SOURCES = (".git", ".venv", "reports", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
               ".hypothesis", ".helpers")


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict[str, Path]:
    """The wheel and a fresh virtual environment holding it, made once per run (xdist workers share
    them under a file lock, pytest-xdist's recipe for a once-per-run fixture)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = (root.parent if worker_id != "master" else root) / "wheel-test"
    root.mkdir(exist_ok=True)
    with FileLock(str(root) + ".lock"):
        done = root / "made.json"
        if not done.exists():
            made = {"source": root / "source", "wheel": build_wheel(root / "source", root / "wheelhouse"),
                    "python": make_venv(root / "venv", root / "deps")}
            install(made["python"], made["wheel"])
            done.write_text(json.dumps({k: str(v) for k, v in made.items()}))
    return {k: Path(v) for k, v in json.loads(done.read_text()).items()}


def build_wheel(source: Path, out: Path) -> Path:
    """``pip wheel`` of a copy of the repository (a build writes build/ and egg-info beside its sources).
    Without build isolation when this interpreter already has the build backend the project asks for,
    so the test needs no network; else pip fetches it, as a user's ``pip wheel`` would."""
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCES), symlinks=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
           "-w", str(out), str(source)]
    if has_build_backend(source / "pyproject.toml"):
        cmd.insert(4, "--no-build-isolation")
    run(cmd, cwd=out.parent)
    (wheel,) = out.glob("*.whl")
    return wheel


def has_build_backend(pyproject: Path) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    for text in tomllib.loads(pyproject.read_text())["build-system"]["requires"]:
        req = Requirement(text)
        try:
            if not req.specifier.contains(version(req.name), prereleases=True):
                return False
        except PackageNotFoundError:
            return False
    return True


def make_venv(target: Path, deps: Path) -> Path:
    """A fresh environment (no pip of its own) whose ``sys.path`` ends with ``deps``: symlinks to this
    environment's installed packages, the editable install of this repository left out."""
    deps.mkdir()
    for site in dict.fromkeys(Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")):
        for entry in site.iterdir():
            editable = entry.name.startswith(("__editable__", PACKAGE)) or entry.suffix in (".pth", ".egg-link")
            if not editable and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    venv.create(target, with_pip=False, symlinks=True)
    python = target / "bin" / "python"
    site_packages = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             cwd=target).strip())
    (site_packages / "_dependencies.pth").write_text(f"{deps}\n")
    return python


def install(python: Path, wheel: Path) -> None:
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q",
         str(wheel)], cwd=python.parent)


def clean_env(python: Path) -> dict[str, str]:
    """The environment a team's shell would have: the fresh venv first on PATH, nothing of this pytest run
    (no PYTEST_* such as xdist's worker id, no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(python.parents[1]),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    return env


def run(cmd: list, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def test_wheel_holds_one_package_with_its_data(installed: dict[str, Path]) -> None:
    """Everything under ``clip_robustness/`` (nothing as ``plugins/`` or ``fixtures/``), and every file of the
    folders it maps (modules, subpackages and the data read at run time: zoo checkpoints matching zoo.json's
    sha256, the embedded LMM, default gates, report templates, the bundled property suite)."""
    import hashlib

    source = installed["source"]  # the copy of this repository it was built from
    folders = tomllib.loads((source / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    with zipfile.ZipFile(installed["wheel"]) as whl:
        names = set(whl.namelist())
        tops = {n.split("/")[0] for n in names}
        assert tops == {PACKAGE, DIST_INFO}, sorted(tops)
        expected = {f"{package.replace('.', '/')}/{file.relative_to(source / folder).as_posix()}"
                    for package, folder in folders.items() for file in (source / folder).rglob("*")
                    if file.is_file() and "__pycache__" not in file.parts}
        missing = sorted(expected - names)
        assert not missing, ("not in the wheel (add the package to [tool.setuptools] packages or the file to "
                             f"[tool.setuptools.package-data] in pyproject.toml): {missing}")
        assert {f"{PACKAGE}/plugins/default_thresholds.toml", f"{PACKAGE}/robustness_tests/test_accuracy.py"} <= names
        # an __init__.py there would make pytest put site-packages/clip_robustness on sys.path (the first folder
        # above without one), where its `plugins` would shadow the team's
        assert f"{PACKAGE}/robustness_tests/__init__.py" not in names
        zoo = json.loads(whl.read(f"{PACKAGE}/fixtures/zoo/zoo.json"))
        for model in zoo["models"]:
            for file, digest in ((model["checkpoint"], model["sha256"]), (model["head_file"], model["head_sha256"])):
                if file:
                    data = whl.read(f"{PACKAGE}/fixtures/zoo/{file}")
                    assert hashlib.sha256(data).hexdigest() == digest, f"{file} in the wheel differs from zoo.json"
        entry_points = whl.read(f"{DIST_INFO}/entry_points.txt").decode()
    assert "clip_robustness = clip_robustness.plugins.robustness" in entry_points
    assert "clip-robustness = clip_robustness.plugins.cli:main" in entry_points


INSTALL_CHECK = """
import importlib, importlib.metadata as md, json, sysconfig
from packaging.requirements import Requirement
dist = md.distribution("clip-robustness-gate")
missing = []
for text in dist.requires or []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        missing.append(f"{req} is not installed")
        continue
    if not req.specifier.contains(have, prereleases=True):
        missing.append(f"{req}: {have} is installed")
generic = {}
for name in ("plugins", "fixtures", "robustness_tests"):
    try:
        generic[name] = importlib.import_module(name).__file__
    except ModuleNotFoundError:
        pass
import clip_robustness, clip_robustness.plugins.robustness as plugin
print(json.dumps({"site": sysconfig.get_paths()["purelib"], "dist": str(dist.locate_file("")),
                  "package": list(clip_robustness.__path__), "plugin": plugin.__file__, "missing": missing,
                  "generic": generic,
                  "pytest11": [e.value for e in md.entry_points(group="pytest11") if e.name == "clip_robustness"]}))
"""


def test_installed_into_fresh_environment(installed: dict[str, Path], tmp_path: Path) -> None:
    """The import name, its metadata and the plugin come from the fresh site-packages (not this checkout);
    site-packages holds no generic top-level name; the wheel's declared requirements are met."""
    python = installed["python"]
    found = json.loads(run([python, "-c", INSTALL_CHECK], cwd=tmp_path, env=clean_env(python)))
    site = Path(found["site"])
    assert [Path(p) for p in found["package"]] == [site / PACKAGE]
    assert Path(found["plugin"]) == site / PACKAGE / "plugins" / "robustness.py"
    assert Path(found["dist"]) == site
    assert found["pytest11"] == ["clip_robustness.plugins.robustness"]
    assert found["missing"] == [], "the wheel's requirements are not met: " + "; ".join(found["missing"])
    assert found["generic"] == {}, f"generic top-level names import: {found['generic']}"
    on_disk = {p.name.removesuffix(".py") for p in site.iterdir()}
    assert not on_disk & set(GENERIC_NAMES), sorted(on_disk & set(GENERIC_NAMES))
    # what pip wrote: the package, its metadata and the console script (in the venv's bin/, outside site)
    written = [line.rsplit(",", 2)[0] for line in (site / DIST_INFO / "RECORD").read_text().splitlines()]
    assert {f.split("/")[0] for f in written if not f.startswith("../")} == {PACKAGE, DIST_INFO}
    assert {f for f in written if f.startswith("../")} == {"../../../bin/clip-robustness"}


# The model team's repository: its own `plugins` package (imported by its test), checkpoint, property, gates.
TEAM_PYPROJECT = """\
[project]
name = "team-clip"
version = "1.0"

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["."]
addopts = ["--strict-markers"]
"""
TEAM_PLUGIN = '''\
"""The team's own image operations (a generic package name, as many repositories have)."""
import numpy as np


def mirror(images, item_ids):
    """Left-right mirror, per image (the team's cameras are mounted flipped)."""
    return [np.ascontiguousarray(image[:, ::-1]) for image in images]  # (H, W, 3), columns reversed
'''
TEAM_TEST = '''\
"""The team's property: zero-shot top-1 on mirrored renders, gated and reported like the bundled ones."""
import pytest

from clip_robustness.fixtures.conditions import condition
from clip_robustness.fixtures.embed import ImageTransform, classifier_logits
from plugins.flips import mirror

pytestmark = pytest.mark.accuracy
MIRRORED = condition(team="mirror")


def test_top1_mirrored(clip, world, cache, record):
    dataset = world("test")
    logits = classifier_logits(clip, dataset, cache, templates="single",
                               condition=ImageTransform(MIRRORED, mirror))  # (N, C)
    record.proportion("top1", logits.argmax(1) == dataset.labels, dataset=dataset.name, condition=MIRRORED)
'''
TEAM_CONFTEST = '''\
"""The team's hooks: where its results go (a file here; MLflow or W&B in a real repository)."""
import json


def pytest_report_header(config):
    return "model-team conftest loaded"


def pytest_robustness_report(report, config):
    tracked = {"run_id": report["run"]["run_id"], "rows": len(report["results"])}
    (config.rootpath / "tracked.json").write_text(json.dumps(tracked))
'''
TEAM_GATES = """\
[[thresholds]]
property = "accuracy"
metric = "top1"
model = "world-rn-tiny@*"
dataset = "world:test"
min = 0.4
reason = "the team's release bar"
"""
PLANTED_FAILURE = """
[[thresholds]]
property = "accuracy"
metric = "top1"
model = "world-rn-tiny@*"
condition = "team=mirror"
max = 0.2
reason = "planted: no model of the team's may be this good"
"""
MODEL = "world-rn-tiny@checkpoints/team-clip.safetensors"


@pytest.fixture
def team(tmp_path: Path) -> Path:
    """A model team's repository; its checkpoint holds the zoo's rn-clip tensors, saved by the team."""
    from safetensors.numpy import load_file, save_file

    repo = tmp_path / "model-team"
    for path, text in {"pyproject.toml": TEAM_PYPROJECT, "plugins/__init__.py": "", "plugins/flips.py": TEAM_PLUGIN,
                       "tests/test_team_mirror.py": TEAM_TEST, "gates.toml": TEAM_GATES,
                       "conftest.py": TEAM_CONFTEST}.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    (repo / "checkpoints").mkdir()
    tensors = load_file(REPO / "fixtures/zoo/weights/rn-clip.safetensors")
    save_file(tensors, repo / "checkpoints/team-clip.safetensors", metadata={"format": "pt", "team": "model-team"})
    return repo


def report_rows(folder: Path) -> list[dict]:
    assert (folder / "robustness.html").is_file()
    return json.loads((folder / "robustness.json").read_text())["results"]


def test_model_team_repository(installed: dict[str, Path], team: Path) -> None:
    """``clip-robustness`` from the team's folder runs a slice of the bundled suite and the team's own test,
    gates both with the team's rules, writes the report there and hands it to the team's conftest hook;
    from a subfolder it finds the same rootdir and conftest.py; ``pytest`` there loads the plugin by its
    entry point, and a planted rule's failure fails the run."""
    python = installed["python"]
    env = clean_env(python)
    options = ["--model", MODEL, "--limit", "20", "--templates", "single"]
    cli = python.parent / "clip-robustness"
    proc = subprocess.run([str(cli), *options, "-m", "accuracy", "-k", "top1_world and not shift or top1_mirrored",
                           "--thresholds", "gates.toml", "tests/test_team_mirror.py"],
                          cwd=team, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = report_rows(team / "reports")
    by_test = {(r["test"].split("::")[0].rsplit("/", 1)[-1], r["condition"]): r for r in rows}
    assert set(by_test) == {("test_accuracy.py", "templates=single"), ("test_team_mirror.py", "team=mirror")}, \
        sorted(by_test)
    for row in rows:
        assert (row["property"], row["model"], row["dataset"], row["n"]) == ("accuracy", MODEL, "world:test", 20)
        assert row["gate"]["verdict"] == "pass", row["gate"]
        assert row["gate"]["rule"] == "gates.toml[0]", row["gate"]
        assert "the team's release bar" in row["gate"]["message"]
    report = json.loads((team / "reports" / "robustness.json").read_text())
    assert json.loads((team / "tracked.json").read_text()) == {"run_id": report["run"]["run_id"], "rows": 2}
    assert str(REPO) not in json.dumps(report)  # nothing ran from this checkout

    proc = subprocess.run([str(cli), "--collect-only", "-m", "accuracy"], cwd=team / "tests", env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"rootdir: {team}\n" in proc.stdout and "model-team conftest loaded" in proc.stdout, proc.stdout

    (team / "planted.toml").write_text(TEAM_GATES + PLANTED_FAILURE)
    proc = subprocess.run([str(python), "-m", "pytest", *options, "--thresholds", "planted.toml",
                           "--report-dir", "reports-direct"],
                          cwd=team, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "top1=" in proc.stdout and "exceeds the bound 0.2" in proc.stdout, proc.stdout
    (row,) = report_rows(team / "reports-direct")
    assert (row["condition"], row["gate"]["verdict"]) == ("team=mirror", "fail")


def test_cli_finds_the_rootdir_as_pytest_does(tmp_path: Path) -> None:
    """``clip-robustness`` names pytest's configuration file, rootdir and rootdir conftest.py from the current
    folder (pytest itself would search above the suite in site-packages), and keeps the user's own choices."""
    from clip_robustness.plugins.cli import SUITE, find_config, pytest_args

    team = tmp_path / "team"
    (team / "src" / "deep").mkdir(parents=True)
    (team / "pyproject.toml").write_text('[project]\nname = "t"\n')  # no pytest table: the rootdir all the same
    assert find_config(team / "src" / "deep") == team / "pyproject.toml"
    (team / "src" / "setup.cfg").write_text("[metadata]\nname = t\n")  # no [tool:pytest]: not a configuration
    (team / "tox.ini").write_text("[pytest]\naddopts = -q\n")
    assert find_config(team / "src" / "deep") == team / "tox.ini"
    (team / "conftest.py").write_text("")
    assert pytest_args(["-m", "ood"], team / "src") == [
        str(SUITE), "-m", "ood", f"--config-file={team / 'tox.ini'}", f"--rootdir={team}", str(team / "conftest.py")]
    (team / "src" / "pytest.ini").write_text("[pytest]\n")
    assert pytest_args(["-c", "../tox.ini", "--noconftest"], team / "src") == [
        str(SUITE), "-c", "../tox.ini", "--noconftest", "--rootdir=.."]
    assert pytest_args(["--config-file=pytest.ini", "--rootdir", "."], team / "src") == [
        str(SUITE), "--config-file=pytest.ini", "--rootdir", "."]
