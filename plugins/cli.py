"""``clip-robustness``: run the bundled property suite from any folder.

    clip-robustness [pytest and robustness options] [your own test files]

is ``pytest <installed robustness_tests> ...`` set up as a plain ``pytest`` in the current folder would be:
the rootdir is the folder of the nearest pytest configuration file at or above the current folder (else the
current folder), so the report lands in ``<rootdir>/reports`` (``--report-dir`` to change it), the embedding
cache in ``<rootdir>/.pytest_cache``, and that folder's pytest configuration, ``pyproject.toml``
``[tool.robustness]`` (models, thresholds) and ``conftest.py`` (hooks such as ``pytest_robustness_report``)
apply. Test files given on the command line run beside the suite, with the same fixtures, gates and report
(docs/writing-a-property.md); their basenames must differ from the suite's (``test_accuracy.py``, ...), as
for any two test modules outside packages.

Left to itself, pytest would look for its configuration above its *first* path, the suite inside
site-packages (possibly another project's), and would load no ``conftest.py`` of the team's folder (it
loads those of the folders of its path arguments), hence the options added here.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1] / "robustness_tests"
# pytest's configuration files in its order of precedence, with the table/section that makes one a pytest
# configuration (None: always); a pyproject.toml without one still marks the rootdir when nothing else does
CONFIG_FILES = {
    "pytest.toml": None, ".pytest.toml": None, "pytest.ini": None, ".pytest.ini": None,
    "pyproject.toml": ("[tool.pytest]", "[tool.pytest.ini_options]"), "tox.ini": ("[pytest]",),
    "setup.cfg": ("[tool:pytest]",),
}


def pytest_args(argv: list[str], cwd: Path) -> list[str]:
    """The pytest command line for ``argv``: the suite, the user's arguments, then the configuration file,
    rootdir and rootdir ``conftest.py`` found from ``cwd`` (each only where the user named none)."""
    args = [str(SUITE), *argv]
    config = option_value(argv, "-c", "--config-file")
    if config is None:
        found = find_config(cwd)
        # with none found, pytest must not search above the suite either: an empty configuration
        args.append(f"--config-file={found or os.devnull}")
        config = found
    rootdir = option_value(argv, "--rootdir")
    if rootdir is None:
        rootdir = Path(config).parent if config else cwd
        args.append(f"--rootdir={rootdir}")
    conftest = cwd / rootdir / "conftest.py"
    if conftest.is_file() and "--noconftest" not in argv:
        args.append(str(conftest))  # pytest loads the conftest.py files of its path arguments' folders
    return args


def option_value(argv: list[str], *names: str) -> str | None:
    """The last value given to one of ``names`` (``--name=V``, ``--name V``, ``-cV``, ``-c V``), else None."""
    value = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(name + "=") or (not name.startswith("--") and arg.startswith(name) and arg != name):
                value = arg[len(name):].removeprefix("=")
    return value


def find_config(cwd: Path) -> Path | None:
    """pytest's configuration file for a run in ``cwd`` (pytest's own search without path arguments)."""
    fallback = None
    for folder in (cwd, *cwd.parents):
        for name, sections in CONFIG_FILES.items():
            path = folder / name
            if not path.is_file():
                continue
            if sections is None or _has_section(path, sections):
                return path
            if name == "pyproject.toml" and fallback is None:
                fallback = path
    return fallback


def _has_section(path: Path, sections: tuple[str, ...]) -> bool:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return any(line.strip() in sections for line in lines)


def main(argv: list[str] | None = None) -> int:
    import pytest

    return int(pytest.main(pytest_args(list(sys.argv[1:] if argv is None else argv), Path.cwd())))


if __name__ == "__main__":
    sys.exit(main())
