"""robustness.json (+ per-sample files) -> one self-contained, static HTML report.

The report is rendered on the server side: a Jinja2 template with autoescape
(``clip_robustness/plugins/templates/report.html.j2``) fills static tables, and matplotlib figures are
inlined as SVG. It opens offline (no external URL, no JavaScript), and the harness's own tests check it
with a plain HTML parser.

Modules, in reading order:

    rows.py        what every part reads off a row: verdicts, metric direction/bounds, formats, the property
                   registry's order/titles/headline metrics, the row a summary quotes (primary_row)
    figures.py     SectionContext (what a view sees), Plot, FigureRenderer (inline SVG, cached by inputs),
                   SampleStore (samples/*.npz on demand), ModelStyles, the drawing helpers the views share
    accuracy.py, calibration.py, ood.py, corruption.py (2D and 3D), factor.py, shape_bias.py,
    retrieval.py, lmm.py
                   one view per property: a plot function SectionContext -> ranked Plot candidates, named by the
                   property's ``view`` in clip_robustness.plugins.properties ("module:function")
    six_factor.py  headline metrics against ID accuracy across models, by model factor
    regression.py  the comparison with a baseline run
    page.py        build_context, render_html, write_html: sections in registry order, summary, header,
                   the command that reproduces the run
    helper.py      DrawingHelper: a second process (draw_ahead.py) drawing the page's figures from its last view
                   backwards into the figure cache while the page's process draws from the first

A new property's view is a function ``(ctx: SectionContext) -> list[Plot]`` in any module, named in its
registry entry; a property without one (``view=""``) gets its table only.
"""
from __future__ import annotations

from clip_robustness.plugins.html.figures import MAX_FIGURES, Plot, SectionContext
from clip_robustness.plugins.html.page import build_context, plot_function, render_html, reproduce_command, write_html
from clip_robustness.plugins.html.rows import higher_is_better, validate_report

__all__ = ["MAX_FIGURES", "Plot", "SectionContext", "build_context", "higher_is_better", "plot_function", "render_html",
           "reproduce_command", "validate_report", "write_html"]
