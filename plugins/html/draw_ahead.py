"""The drawing helper's process (``clip_robustness.plugins.html.helper``):

    python -m clip_robustness.plugins.html.draw_ahead FOLDER

reads FOLDER/inputs.pickle (the report, its folder, the figure cache folder and the page's views in the order to
draw them) and draws those views into the figure cache. Silent by design: whatever fails here, the page's own
process draws that figure itself and reports it.
"""
from __future__ import annotations

import pickle
import sys
import warnings
from pathlib import Path
from typing import Any


def draw_views_into_cache(report: dict[str, Any], report_dir: Path, cache_dir: Path, views: list[str]) -> None:
    """Draw ``views`` of the page, in this order, into the figure cache."""
    import matplotlib as mpl

    from clip_robustness.plugins.html.figures import PLOT_STYLE
    from clip_robustness.plugins.html.page import PageFigures

    figures = PageFigures.of(report, Path(report_dir), Path(cache_dir))
    with mpl.rc_context(PLOT_STYLE):
        for view in views:
            figures.draw(view)


def main(folder: str) -> int:
    warnings.simplefilter("ignore")  # a figure read from the cache shows no drawing warning either
    with open(Path(folder) / "inputs.pickle", "rb") as f:
        inputs = pickle.load(f)
    draw_views_into_cache(inputs["report"], Path(inputs["report_dir"]), Path(inputs["cache_dir"]), inputs["views"])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1]))
    except Exception:  # noqa: BLE001 - silent by design (see the module docstring)
        sys.exit(1)
