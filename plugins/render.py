"""Re-render the HTML report from a robustness.json without re-running tests.

    python -m clip_robustness.plugins.render reports/robustness.json [--out reports/robustness.html]

Per-sample files are read from the JSON's folder (``samples/*.npz`` beside it). Exit status 2 with a
one-line message on stderr for a missing or invalid file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clip_robustness.plugins.render", description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="a robustness.json written by the harness")
    parser.add_argument("--out", type=Path, default=None,
                        help="HTML file to write (default: robustness.html beside the JSON)")
    args = parser.parse_args(argv)
    out = args.out or args.json.with_suffix(".html")

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    from clip_robustness.plugins.rows import ReportError, load_report

    try:
        report = load_report(args.json).to_json()
    except ReportError as err:
        return fail(str(err))

    from clip_robustness.plugins.html import write_html  # matplotlib loads only for a valid input

    try:
        write_html(report, out, report_dir=args.json.parent)
    except OSError as err:
        return fail(f"{out}: cannot write the report ({err})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
