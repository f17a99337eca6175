"""``clip-robustness``: run the bundled property suite from any folder.

    clip-robustness [pytest and robustness options] [your own test files]

is ``pytest <installed robustness_tests> ...`` with the current folder as pytest's rootdir, so the report
lands in ``./reports`` (``--report-dir`` to change it), the embedding cache in ``./.pytest_cache``, and the
current folder's ``pyproject.toml`` ``[tool.robustness]`` (models, thresholds) and pytest configuration
apply. Test files given on the command line run beside the suite, with the same fixtures, gates and
report (docs/writing-a-property.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1] / "robustness_tests"
# pytest's configuration files, in pytest's own order of precedence
CONFIG_FILES = ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")


def pytest_args(argv: list[str], cwd: Path) -> list[str]:
    """The pytest command line for ``argv``: the suite, then the user's arguments; the rootdir and the
    configuration file are the current folder's unless the user names them."""
    args = [str(SUITE), *argv]
    if not any(a == "--rootdir" or a.startswith("--rootdir=") for a in argv):
        args.append(f"--rootdir={cwd}")
    # pytest would look for its configuration above the suite's folder (in site-packages); the team's is here
    if not any(a in ("-c", "--config-file") or a.startswith("--config-file=") for a in argv):
        config = next((cwd / name for name in CONFIG_FILES if _holds_pytest_config(cwd / name)), None)
        if config is not None:
            args.append(f"--config-file={config}")
    return args


def _holds_pytest_config(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.name in ("pytest.ini", ".pytest.ini"):
        return True
    text = path.read_text(encoding="utf-8", errors="replace")
    marker = {"pyproject.toml": "[tool.pytest.ini_options]", "tox.ini": "[pytest]", "setup.cfg": "[tool:pytest]"}
    return marker[path.name] in text


def main(argv: list[str] | None = None) -> int:
    import pytest

    return int(pytest.main(pytest_args(list(sys.argv[1:] if argv is None else argv), Path.cwd())))


if __name__ == "__main__":
    sys.exit(main())
