"""Figures: what a view sees (:class:`SectionContext`), how a figure candidate is drawn to inline SVG and
cached (:class:`Plot`, :class:`FigureRenderer`), per-sample files read on demand (:class:`SampleStore`),
one colour per model (:class:`ModelStyles`), and the drawing helpers the views share.

A view turns its property's rows into ranked :class:`Plot` candidates (most informative first); the page
draws at most ``MAX_FIGURES`` of them per property, so the file stays small. Per-sample files
(``samples/*.npz``) are optional: a missing or unreadable file costs its figure, never the report, and the
report says which file was missing.
"""
from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from markupsafe import Markup

from clip_robustness.plugins import metrics as _metrics
from clip_robustness.plugins import properties as _properties
from clip_robustness.plugins.html.rows import metric_limits, natural_key, num

MAX_FIGURES = 12  # per property section; the table always lists every cell
FIGURE_CACHE_VERSION = 2  # part of every cached figure's key: bump to drop all cached SVGs
# The page's views beside the property sections, as FigureRenderer.render names them: names no property (a
# pytest marker) can have.
REGRESSION_VIEW, FACTORS_VIEW = "@regression", "@six-factor"
UNPLOTTED_EXTRA = frozenset({"images_per_s"})  # row extras no figure draws (a throughput differs run to run)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22")
# Factor levels get their own palette so they are not mistaken for the per-model colours.
LEVEL_PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
PLOT_STYLE = {
    "svg.fonttype": "none",  # text stays <text>: smaller files, and the browser's fonts
    "text.parse_math": False,  # a "$" in a model name is text, not mathtext
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"],  # short font lists in every <text>
    "font.size": 8.5, "axes.titlesize": 9, "axes.labelsize": 8.5,
    "xtick.labelsize": 7.5, "ytick.labelsize": 7.5, "legend.fontsize": 7.5, "legend.frameon": False,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.35,
    "grid.linewidth": 0.5, "axes.axisbelow": True, "axes.edgecolor": "#555555", "figure.dpi": 100,
    "savefig.dpi": 110, "path.simplify": True,
}


class SampleStore:
    """Reads ``samples/*.npz`` on demand; a missing or broken file becomes a reason string.

    Arrays are not kept between figures (an ImageNet logits file is ~200 MB); only the verdict on
    each file is remembered, for the footer."""

    def __init__(self, report_dir: Path) -> None:
        self.report_dir = Path(report_dir)
        self._problems: dict[str, str | None] = {}

    def _path(self, rel: str) -> Path | str:
        root = self.report_dir.resolve()
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            return "is outside the report folder"
        if not path.is_file():
            return "is missing"
        if not zipfile.is_zipfile(path):  # np.load would try to unpickle it and blame pickling
            return "is unreadable (not an .npz archive)"
        return path

    def load(self, rel: str) -> dict[str, np.ndarray] | str:
        """The file's arrays, or why they cannot be read."""
        path = self._path(rel) if self._problems.get(rel) is None else self._problems[rel]
        if isinstance(path, str):
            self._problems[rel] = path
            return path
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            self._problems[rel] = f"is unreadable ({type(err).__name__}: {str(err).splitlines()[0][:160]})"
            return self._problems[rel]
        self._problems[rel] = None
        return arrays

    def status(self, rel: str) -> tuple[str, int | None]:
        """(``"ok"`` or the reason, size in bytes) for the footer, without reading files no plot needed."""
        problem = self._problems[rel] if rel in self._problems else self._path(rel)
        if isinstance(problem, str):
            return problem, None
        return "ok", (self.report_dir / rel).stat().st_size


@dataclass
class Plot:
    """A figure candidate: ``draw(fig)`` fills a matplotlib Figure; it returns False when it had
    nothing to draw (e.g. every per-sample file it needed was missing)."""

    title: str
    draw: Callable[[Any], bool | None]
    size: tuple[float, float] = (6.4, 3.0)
    caption: str = ""


@dataclass
class RenderedFigure:
    """A drawn figure as the template shows it: title, caption, inline SVG (marked safe: matplotlib wrote it)."""

    title: str
    caption: str
    svg: Markup


class FigureRenderer:
    """Draws figures to inline SVG. Each figure gets its own deterministic ``svg.hashsalt`` (its view and its
    place among the view's drawn figures), so the ids of clip paths are reproducible and do not collide
    between figures of one document, and a figure's salt does not depend on what other views drew.

    With a ``cache`` (the run's embedding cache), each figure's SVG and the notes its drawing made are
    kept on disk under ``inputs`` (:func:`figure_inputs`: everything a plot reads) plus the plot's view,
    place, title, caption and size, so re-rendering an unchanged report draws nothing and writes the same
    bytes, and another process can draw some of the figures ahead (``clip_robustness.plugins.html.helper``).
    ``before_drawing(n)`` is called before this renderer draws a figure itself, with the number it drew so far."""

    def __init__(self, cache: Any = None, inputs: str = "",
                 before_drawing: Callable[[int], None] | None = None) -> None:
        self.cache = cache
        self.inputs = inputs
        self.before_drawing = before_drawing
        self.drawn_here = 0  # figures this renderer drew (the others came from the cache)
        self._seen: Counter[str] = Counter()  # candidates seen per view: a plot's place in its view
        self._drawn: Counter[str] = Counter()  # figures drawn per view: the salt of the next one

    def render(self, plot: Plot, ctx: SectionContext | None = None, *,
               view: str | None = None) -> RenderedFigure | None:
        """The plot as an inline figure, or None when it had nothing to draw. ``view`` names the part of the
        page it belongs to (default: the section's property)."""
        view = view if view is not None else ctx.prop if ctx else "page"
        self._seen[view] += 1
        salt = f"rb-fig-{view}-{self._drawn[view] + 1}"
        if self.cache is None:
            drawn = self._draw_here(plot, salt, ctx)
        else:
            parts = {"kind": "html-figure", "version": FIGURE_CACHE_VERSION, "inputs": self.inputs,
                     "section": view, "call": self._seen[view], "salt": salt, "title": plot.title,
                     "caption": plot.caption, "size": [float(x) for x in plot.size]}
            drawn = self.cache.get_or_compute_json(parts, lambda: self._draw_here(plot, salt, ctx))
            for note in drawn["notes"]:  # a cached figure replays the notes its drawing made
                ctx.note(note)  # type: ignore[union-attr]  (notes exist only with a ctx)
        if drawn["svg"] is None:
            return None
        self._drawn[view] += 1
        return RenderedFigure(plot.title, plot.caption, Markup(drawn["svg"]))

    def _draw_here(self, plot: Plot, salt: str, ctx: SectionContext | None) -> dict[str, Any]:
        if self.before_drawing is not None:
            self.before_drawing(self.drawn_here)
        self.drawn_here += 1
        return self._draw(plot, salt, ctx)

    @staticmethod
    def _draw(plot: Plot, salt: str, ctx: SectionContext | None) -> dict[str, Any]:
        import matplotlib as mpl
        from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

        before = list(ctx.notes) if ctx else []
        fig = Figure(figsize=plot.size, layout="constrained")
        svg = None
        if plot.draw(fig) is not False:
            buffer = io.StringIO()
            with mpl.rc_context({"svg.hashsalt": salt}):
                fig.savefig(buffer, format="svg", metadata={"Date": None})
            svg = _clean_svg(buffer.getvalue())
        return {"svg": svg, "notes": [n for n in ctx.notes if n not in before] if ctx else []}


def figure_inputs(rows: Sequence[dict[str, Any]], run: dict[str, Any], store: SampleStore) -> str:
    """Digest of everything a figure can depend on: the rows, the run's models and template sets (the only
    run fields plots read; add any other here), each per-sample file's state (its name hashes its arrays),
    and the drawing code (this package, the metrics it calls, the property registry's preferred conditions,
    matplotlib's version, FIGURE_CACHE_VERSION)."""
    import hashlib

    import matplotlib

    files = sorted({r["samples"] for r in rows if r.get("samples")})
    rows = [{**r, "extra": {k: v for k, v in (r.get("extra") or {}).items() if k not in UNPLOTTED_EXTRA}} for r in rows]
    code = sorted(Path(__file__).parent.glob("*.py")) + [Path(m.__file__) for m in (_metrics, _properties)]
    code += _view_sources({r["property"] for r in rows})  # a project's own view (properties.register) too
    state = {"rows": rows, "models": run.get("models") or {},
             "templates": (run.get("config") or {}).get("templates"), "samples": [[f, *store.status(f)] for f in files],
             "matplotlib": matplotlib.__version__, "version": FIGURE_CACHE_VERSION,
             "code": [hashlib.sha256(path.read_bytes()).hexdigest() for path in code]}
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def _view_sources(props: set[str]) -> list[Path]:
    """The source files of the registry's views of ``props`` that live outside this package."""
    import importlib.util

    out = []
    for prop in sorted(props):
        entry = _properties.PROPERTIES.get(prop)
        if entry is None or not entry.view:
            continue
        try:
            spec = importlib.util.find_spec(entry.view.partition(":")[0])
        except (ImportError, ValueError):  # the section notes that its view cannot be imported
            continue
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        if origin is not None and origin.is_file() and origin.parent != Path(__file__).parent:
            out.append(origin)
    return out


_COORD_ATTR = re.compile(r'\b(d|x|y|width|height|transform|viewBox)="([^"]*)"')
_LONG_DECIMAL = re.compile(r"(\d+\.\d\d)\d+")


def _round_coords(match: re.Match[str]) -> str:
    # 0.01 pt is far below what a screen shows; only geometry attributes change, never text content.
    value = _LONG_DECIMAL.sub(r"\1", " ".join(match[2].split()))
    return f'{match[1]}="{value}"'


def _clean_svg(svg: str) -> str:
    """Inline-ready, compact SVG: no XML prolog/doctype, no RDF metadata block (it only holds URLs),
    coordinates to 0.01 pt, no indentation between tags, no no-op text rotations."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.DOTALL)
    svg = re.sub(r' transform="rotate\(-0 [^"]*\)"', "", svg)
    svg = re.sub(r"<[^>]+>", lambda tag: _COORD_ATTR.sub(_round_coords, tag[0]), svg)  # tags only, not text
    return re.sub(r">\s+<", "><", svg).strip()


class ModelStyles:
    """One colour (and marker) per model, the same in every figure."""

    def __init__(self, models: Sequence[str]) -> None:
        self.order = {m: i for i, m in enumerate(dict.fromkeys(models))}  # first occurrence wins

    def color(self, model: str) -> str:
        """The model's colour."""
        return PALETTE[self.order.get(model, 0) % len(PALETTE)]

    def marker(self, model: str) -> str:
        """The model's marker (for scatter and dot plots)."""
        return MARKERS[self.order.get(model, 0) % len(MARKERS)]

    def sort(self, models: Iterable[str]) -> list[str]:
        """Distinct models in the run's order (unknown ones last, by name)."""
        return sorted(set(models), key=lambda m: (self.order.get(m, len(self.order)), m))


@dataclass
class SectionContext:
    """What a plot function sees: its property's rows, all rows, and helpers."""

    prop: str
    rows: list[dict[str, Any]]
    all_rows: list[dict[str, Any]]
    run: dict[str, Any]
    store: SampleStore
    styles: ModelStyles
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        """A sentence shown under the section (once): what is not drawn, and why."""
        if text not in self.notes:
            self.notes.append(text)

    def samples(self, row: dict[str, Any], keys: Sequence[str], what: str) -> dict[str, np.ndarray] | str:
        """The row's per-sample arrays, or (with a note saying what is not drawn) why not."""
        rel = row.get("samples")
        data = self.store.load(rel) if rel else "No per-sample file was recorded"
        if isinstance(data, str) and rel:
            data = f"Per-sample file {rel} {data}"
        elif not isinstance(data, str) and any(k not in data for k in keys):
            data = f"Per-sample file {rel} lacks {', '.join(k for k in keys if k not in data)}"
        if isinstance(data, str):
            self.note(f"{data}: the {what} of {describe(row)} is not drawn.")
        return data

    def bad_samples(self, row: dict[str, Any], err: Exception, what: str) -> str:
        """Note a readable per-sample file whose arrays a plot cannot use; returns the reason."""
        reason = f"Per-sample file {row['samples']} holds unusable arrays ({str(err).splitlines()[0][:160]})"
        self.note(f"{reason}: the {what} of {describe(row)} is not drawn.")
        return reason


PlotFunction = Callable[[SectionContext], list[Plot]]  # a view: Property.view names one ("module:function")


def describe(row: dict[str, Any]) -> str:
    """``model on dataset (condition)``, for notes."""
    return f"{row['model']} on {row['dataset']}" + (f" ({row['condition']})" if row["condition"] else "")


# --------------------------------------------------------------------------------------------
# drawing helpers


def yerr(values: Sequence[float], cis: Sequence[Sequence[Any] | None]) -> np.ndarray:
    """(2, K) non-negative error-bar lengths from CIs (0 where a cell has none)."""
    err = np.zeros((2, len(values)))
    for i, (v, ci) in enumerate(zip(values, cis)):
        if ci and ci[0] is not None and ci[1] is not None and not math.isnan(v):
            err[:, i] = max(v - ci[0], 0.0), max(ci[1] - v, 0.0)
    return err


def grouped_bars(ax: Any, groups: Sequence[str], cells: dict[tuple[str, str], dict[str, Any]],
                 models: Sequence[str], styles: ModelStyles, metric: str, *, ylabel: str | None = None) -> None:
    """Bars of ``cells[(group, model)]["value"]`` with CI error bars, one colour per model."""
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(groups))
    for j, model in enumerate(models):
        rows = [cells.get((g, model)) for g in groups]
        values = [num(r["value"]) if r else math.nan for r in rows]
        cis = [r.get("ci") if r else None for r in rows]
        ax.bar(x + (j - (len(models) - 1) / 2) * width, np.nan_to_num(values, nan=0.0), width * 0.92,
               yerr=yerr(values, cis), color=styles.color(model), label=model,
               error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "#333333"})
    long_labels = max((len(line) for g in groups for line in g.split("\n")), default=0) * len(groups) > 90
    ax.set_xticks(x, groups, rotation=30 if long_labels else 0, ha="right" if long_labels else "center",
                  rotation_mode="anchor")
    ax.set_ylabel(ylabel or metric)
    limit_axis(ax.set_ylim, metric)
    # above the axes, outside: constrained layout makes room for it
    ax.figure.legend(loc="outside upper center", ncols=min(len(models), 4), fontsize=7)


def dot_plot(fig: Any, rows: list[dict[str, Any]], styles: ModelStyles, xlabel: str) -> None:
    """One row per cell, one marker per model with its CI, and a zero line."""
    ax = fig.add_subplot()
    labels = sorted({cell_label(r) for r in rows}, key=natural_key)
    models = styles.sort(r["model"] for r in rows)
    offset = 0.6 / max(len(models), 1)
    for j, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        y = [labels.index(cell_label(r)) + (j - (len(models) - 1) / 2) * offset for r in mine]
        x = [num(r["value"]) for r in mine]
        ax.errorbar(x, y, xerr=yerr(x, [r.get("ci") for r in mine]), fmt=styles.marker(model), ms=4,
                    color=styles.color(model), elinewidth=0.8, capsize=1.5, label=model)
    ax.axvline(0, color="#444444", lw=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))


def limit_axis(setter: Callable[..., Any], metric: str) -> None:
    """Axis limits from the metric's registry bounds, when both are finite."""
    lo, hi = metric_limits(metric)
    if lo is not None and hi is not None:
        setter(lo, hi * 1.02 if hi > 0 else hi)


def cell_label(row: dict[str, Any], *, sep: str = " · ") -> str:
    """``dataset · condition`` (the dataset alone for the clean condition)."""
    return row["dataset"] + (f"{sep}{row['condition']}" if row["condition"] else "")


def panel_message(ax: Any, text: str) -> None:
    """Write why a panel is empty in place of its plot."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=8, color="#a33",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` cut into runs of at most ``size`` (one figure each)."""
    return [items[i:i + size] for i in range(0, len(items), size)]
