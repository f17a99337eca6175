"""robustness.json (+ per-sample files) -> one self-contained, static HTML report.

The report is rendered on the server side: a Jinja2 template with autoescape fills static tables, and
matplotlib figures are inlined as SVG. It opens offline (no external URL, no JavaScript), and the
harness's own tests check it with a plain HTML parser.

Plots per property are looked up in a registry filled by ``@property_view("ood", group_by="score")``.
A plot function turns the property's rows into ranked :class:`Plot` candidates (most informative
first); the renderer draws at most ``MAX_FIGURES`` of them per property, so the file stays small.
Per-sample files (``samples/*.npz``) are optional: a missing or unreadable file costs its figure,
never the report, and the report says which file was missing.

Metric direction and bounds come from :data:`clip_robustness.plugins.metrics.METRICS` (the row's own
``higher_is_better`` only for metrics the registry does not know).
"""
from __future__ import annotations

import io
import json
import math
import re
import shlex
import sys
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from clip_robustness.fixtures._io import atomic_write_text
from clip_robustness.fixtures.conditions import join_condition, parse_condition
from clip_robustness.fixtures.models import FACTOR_KEYS
from clip_robustness.plugins.gates import describe_cell
from clip_robustness.plugins import metrics as _metrics
from clip_robustness.plugins.metrics import METRICS, calibration_bins, softmax

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PROPERTY_ORDER = ("accuracy", "factor", "shape_bias", "calibration", "ood", "retrieval",
                  "corruption2d", "corruption3d", "multiview", "lmm")
PROPERTY_TITLES = {
    "accuracy": "Zero-shot accuracy", "factor": "Visual-factor invariance", "shape_bias": "Shape bias",
    "calibration": "Calibration", "ood": "OOD detection", "retrieval": "Image–text retrieval",
    "corruption2d": "2D corruptions", "corruption3d": "3D corruptions",
    "multiview": "3D awareness (multi-view)", "lmm": "LMM interaction",
}
# The metric a summary cell and the six-factor view show per property (first one present wins;
# otherwise the property's most frequent metric).
HEADLINE_METRICS = {
    "accuracy": ("top1",), "factor": ("top1", "consistency"), "shape_bias": ("shape_bias",),
    "calibration": ("ece",), "ood": ("auroc",), "retrieval": ("i2t_r1", "t2i_r1"),
    "corruption2d": ("top1", "relative_top1"), "corruption3d": ("top1", "relative_top1"),
    "multiview": ("correspondence_recall", "consistency"), "lmm": ("lmm_gain",),
}
VERDICTS = ("fail", "inconclusive", "pass")
NO_GATE = "none"
VERDICT_RANK = {"fail": 0, "inconclusive": 1, "pass": 2, NO_GATE: 3}
VERDICT_LABEL = {"fail": "fail", "inconclusive": "inconclusive", "pass": "pass", NO_GATE: "no gate"}
MAX_FIGURES = 12  # per property section; the table always lists every cell
FIGURE_CACHE_VERSION = 1  # part of every cached figure's key: bump to drop all cached SVGs
UNPLOTTED_EXTRA = frozenset({"images_per_s"})  # row extras no figure draws (a throughput differs run to run)
ROC_POINTS = 201  # ROC curves are drawn on at most this many FPR points
MAX_HIST_MODELS = 3  # score histograms per OOD figure (ROC shows all models)
MAX_FOREST_ROWS = 40  # regression comparisons drawn in the change-vs-baseline plot (all are in the table)
PANELS_PER_FIGURE = 8  # corruption families per accuracy-vs-severity figure
# Condition keys that split one measured cell into sub-cells (averaged in the six-factor view).
SUBCELL_KEYS = frozenset({"class", "corruption", "severity", "factor", "value"})
# The condition values a summary prefers when a cell was measured several ways.
# (LMM: log-likelihood scoring, which answers every item; generated answers may name neither option.)
PREFERRED_CONDITION = {"scaling": "none", "score": "mcm", "scoring": "loglik"}
_RECALL = re.compile(r"(?:^|_)r(?:ecall)?@?(\d+)$", re.IGNORECASE)
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
            "#7f7f7f", "#bcbd22")
# Factor levels get their own palette so they are not mistaken for the per-model colours.
_LEVEL_PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
_MAX_POINT_LABELS = 8  # name the points of a six-factor scatter up to this many models
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_PLOT_STYLE = {
    "svg.fonttype": "none",  # text stays <text>: smaller files, and the browser's fonts
    "text.parse_math": False,  # a "$" in a model name is text, not mathtext
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"],  # short font lists in every <text>
    "font.size": 8.5, "axes.titlesize": 9, "axes.labelsize": 8.5,
    "xtick.labelsize": 7.5, "ytick.labelsize": 7.5, "legend.fontsize": 7.5, "legend.frameon": False,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.35,
    "grid.linewidth": 0.5, "axes.axisbelow": True, "axes.edgecolor": "#555555", "figure.dpi": 100,
    "savefig.dpi": 110, "path.simplify": True,
}


# --------------------------------------------------------------------------------------------
# rows, conditions, metric metadata


def _natural_key(text: str) -> tuple[Any, ...]:
    """Sort ``severity=10`` after ``severity=2``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def higher_is_better(metric: str, row: dict[str, Any] | None = None) -> bool | None:
    """Direction from the metric registry, else from the row; ``None`` when neither says."""
    if metric in METRICS:
        return METRICS[metric].higher_is_better
    value = (row or {}).get("higher_is_better")
    return value if isinstance(value, bool) else None


def metric_limits(metric: str) -> tuple[float | None, float | None]:
    """Finite registry bounds of a metric, for axis limits."""
    info = METRICS.get(metric)
    if info is None:
        return None, None
    return (info.lower_bound if math.isfinite(info.lower_bound) else None,
            info.upper_bound if math.isfinite(info.upper_bound) else None)


def verdict_of(row: dict[str, Any]) -> str:
    gate = row.get("gate")
    return gate["verdict"] if gate else NO_GATE


def worst_verdict(verdicts: Iterable[str]) -> str:
    return min(verdicts, key=VERDICT_RANK.__getitem__, default=NO_GATE)


def _badness(row: dict[str, Any]) -> tuple[int, float]:
    """Sort key, worst first: failed gates, then the value furthest in the bad direction."""
    value = _num(row.get("value"))
    hib = higher_is_better(row["metric"], row)
    oriented = math.inf if math.isnan(value) or hib is None else (value if hib else -value)
    return VERDICT_RANK[verdict_of(row)], oriented


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    x = float(x)
    return "nan" if math.isnan(x) else f"{x:.{digits}g}"


def fmt_count(x: Any) -> str:
    return "n/a" if x is None else str(x)


def fmt_ci(ci: Sequence[Any] | None) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "—"


def headline_metric(prop: str, rows: Sequence[dict[str, Any]]) -> str | None:
    present = Counter(r["metric"] for r in rows)
    for metric in HEADLINE_METRICS.get(prop, ()):
        if metric in present:
            return metric
    return min(present, key=lambda m: (-present[m], m)) if present else None


def validate_report(report: Any) -> None:
    """Raise a ValueError naming the first problem of a parsed robustness.json object."""
    if not isinstance(report, dict):
        raise ValueError(f"a robustness report is a JSON object with 'run' and 'results'; got {type(report).__name__}")
    if not isinstance(report.get("results"), list):
        raise ValueError("the report has no 'results' list: is this a robustness.json written by the harness?")
    if not isinstance(report.get("run", {}), dict):
        raise ValueError(f"report 'run' must be an object, got {type(report['run']).__name__}")
    for i, row in enumerate(report["results"]):
        where = f"results[{i}]"
        if not isinstance(row, dict):
            raise ValueError(f"{where} must be an object, got {type(row).__name__}")
        for key in ("property", "model", "dataset", "condition", "metric"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"{where} needs a string {key!r}; got {row.get(key)!r}")
        value = row.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{where} ({row['metric']}) value must be a number or null; got {value!r}")
        ci = row.get("ci")
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2
                                   and all(c is None or isinstance(c, (int, float)) for c in ci)):
            raise ValueError(f"{where} ci must be [lo, hi] or null; got {ci!r}")
        gate = row.get("gate")
        if gate is not None and (not isinstance(gate, dict) or gate.get("verdict") not in VERDICTS):
            raise ValueError(f"{where} gate must be null or an object with verdict in {VERDICTS}; got {gate!r}")
        if row.get("samples") is not None and not isinstance(row["samples"], str):
            raise ValueError(f"{where} samples must be a path relative to the report folder or null")


# --------------------------------------------------------------------------------------------
# per-sample files


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


# --------------------------------------------------------------------------------------------
# figures


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
    title: str
    caption: str
    svg: Markup


class FigureRenderer:
    """Draws figures to inline SVG. Each figure gets its own deterministic ``svg.hashsalt`` so the
    ids of clip paths are reproducible and do not collide between figures of one document.

    With a ``cache`` (the run's embedding cache), each figure's SVG and the notes its drawing made are
    kept on disk under ``inputs`` (:func:`figure_inputs`: everything a plot reads) plus the plot's place,
    title, caption and size, so re-rendering an unchanged report draws nothing and writes the same bytes."""

    def __init__(self, cache: Any = None, inputs: str = "") -> None:
        self.count = 0  # figures drawn (the salt of the next one)
        self.calls = 0  # candidates seen: a plot's place in the document
        self.cache = cache
        self.inputs = inputs

    def render(self, plot: Plot, ctx: SectionContext | None = None) -> RenderedFigure | None:
        self.calls += 1
        salt = f"rb-fig-{self.count + 1}"
        if self.cache is None:
            drawn = self._draw(plot, salt, ctx)
        else:
            parts = {"kind": "html-figure", "version": FIGURE_CACHE_VERSION, "inputs": self.inputs,
                     "section": ctx.prop if ctx else "", "call": self.calls, "salt": salt, "title": plot.title,
                     "caption": plot.caption, "size": [float(x) for x in plot.size]}
            drawn = self.cache.get_or_compute_json(parts, lambda: self._draw(plot, salt, ctx))
            for note in drawn["notes"]:  # a cached figure replays the notes its drawing made
                ctx.note(note)  # type: ignore[union-attr]  (notes exist only with a ctx)
        if drawn["svg"] is None:
            return None
        self.count += 1
        return RenderedFigure(plot.title, plot.caption, Markup(drawn["svg"]))

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
    and the drawing code (this module, the metrics it calls, matplotlib's version, FIGURE_CACHE_VERSION)."""
    import hashlib

    import matplotlib

    files = sorted({r["samples"] for r in rows if r.get("samples")})
    rows = [{**r, "extra": {k: v for k, v in (r.get("extra") or {}).items() if k not in UNPLOTTED_EXTRA}} for r in rows]
    state = {"rows": rows, "models": run.get("models") or {},
             "templates": (run.get("config") or {}).get("templates"), "samples": [[f, *store.status(f)] for f in files],
             "matplotlib": matplotlib.__version__, "version": FIGURE_CACHE_VERSION,
             "code": [hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest() for m in (sys.modules[__name__], _metrics)]}
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


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
        return _PALETTE[self.order.get(model, 0) % len(_PALETTE)]

    def marker(self, model: str) -> str:
        return _MARKERS[self.order.get(model, 0) % len(_MARKERS)]

    def sort(self, models: Iterable[str]) -> list[str]:
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
            self.note(f"{data}: the {what} of {_describe(row)} is not drawn.")
        return data

    def bad_samples(self, row: dict[str, Any], err: Exception, what: str) -> str:
        """Note a readable per-sample file whose arrays a plot cannot use; returns the reason."""
        reason = f"Per-sample file {row['samples']} holds unusable arrays ({str(err).splitlines()[0][:160]})"
        self.note(f"{reason}: the {what} of {_describe(row)} is not drawn.")
        return reason


def _describe(row: dict[str, Any]) -> str:
    return f"{row['model']} on {row['dataset']}" + (f" ({row['condition']})" if row["condition"] else "")


PlotFunction = Callable[[SectionContext], list[Plot]]


@dataclass(frozen=True)
class PropertyView:
    plots: PlotFunction
    group_by: str  # condition key (or "dataset") that groups the property's table


PROPERTY_VIEWS: dict[str, PropertyView] = {}


def property_view(name: str, *, group_by: str = "dataset") -> Callable[[PlotFunction], PlotFunction]:
    """Register the plot function of a property (a decorator; one function may serve several)."""

    def register(fn: PlotFunction) -> PlotFunction:
        if name in PROPERTY_VIEWS:
            raise ValueError(f"plots for property {name!r} registered twice: "
                             f"{PROPERTY_VIEWS[name].plots.__qualname__} and {fn.__qualname__}")
        PROPERTY_VIEWS[name] = PropertyView(fn, group_by)
        return fn

    return register


# --------------------------------------------------------------------------------------------
# drawing helpers


def _yerr(values: Sequence[float], cis: Sequence[Sequence[Any] | None]) -> np.ndarray:
    """(2, K) non-negative error-bar lengths from CIs (0 where a cell has none)."""
    err = np.zeros((2, len(values)))
    for i, (v, ci) in enumerate(zip(values, cis)):
        if ci and ci[0] is not None and ci[1] is not None and not math.isnan(v):
            err[:, i] = max(v - ci[0], 0.0), max(ci[1] - v, 0.0)
    return err


def _grouped_bars(ax: Any, groups: Sequence[str], cells: dict[tuple[str, str], dict[str, Any]],
                  models: Sequence[str], styles: ModelStyles, metric: str, *, ylabel: str | None = None) -> None:
    """Bars of ``cells[(group, model)]["value"]`` with CI error bars, one colour per model."""
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(groups))
    for j, model in enumerate(models):
        rows = [cells.get((g, model)) for g in groups]
        values = [_num(r["value"]) if r else math.nan for r in rows]
        cis = [r.get("ci") if r else None for r in rows]
        ax.bar(x + (j - (len(models) - 1) / 2) * width, np.nan_to_num(values, nan=0.0), width * 0.92,
               yerr=_yerr(values, cis), color=styles.color(model), label=model,
               error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "#333333"})
    long_labels = max((len(line) for g in groups for line in g.split("\n")), default=0) * len(groups) > 90
    ax.set_xticks(x, groups, rotation=30 if long_labels else 0, ha="right" if long_labels else "center",
                  rotation_mode="anchor")
    ax.set_ylabel(ylabel or metric)
    _limit_axis(ax.set_ylim, metric)
    # above the axes, outside: constrained layout makes room for it
    ax.figure.legend(loc="outside upper center", ncols=min(len(models), 4), fontsize=7)


def _limit_axis(setter: Callable[..., Any], metric: str) -> None:
    lo, hi = metric_limits(metric)
    if lo is not None and hi is not None:
        setter(lo, hi * 1.02 if hi > 0 else hi)


def _cell_label(row: dict[str, Any], *, sep: str = " · ") -> str:
    return row["dataset"] + (f"{sep}{row['condition']}" if row["condition"] else "")


def _panel_message(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=8, color="#a33",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# --------------------------------------------------------------------------------------------
# per-property plots


@property_view("accuracy")
def accuracy_plots(ctx: SectionContext) -> list[Plot]:
    rows = [r for r in ctx.rows if r["metric"] == "top1"]
    cells = {(_cell_label(r, sep="\n"), r["model"]): r for r in rows}
    groups = sorted({g for g, _ in cells}, key=_natural_key)
    models = ctx.styles.sort(r["model"] for r in rows)

    def draw(chunk: Sequence[str]) -> Callable[[Any], None]:
        return lambda fig: _grouped_bars(fig.add_subplot(), chunk, cells, models, ctx.styles, "top1")

    return [Plot("Top-1 accuracy per dataset" + (f" ({i + 1})" if len(groups) > 10 else ""), draw(chunk),
                 (max(5.0, 0.9 + max(0.28 * len(models), 1.1) * len(chunk)), 3.2),
                 "Bars: top-1 accuracy; error bars: 95% CI (Wilson).")
            for i, chunk in enumerate(_chunks(groups, 10))]


def _scaling(row: dict[str, Any]) -> str:
    return parse_condition(row["condition"]).get("scaling", "none")


def _without(row: dict[str, Any], *keys: str) -> str:
    return join_condition({k: v for k, v in parse_condition(row["condition"]).items() if k not in keys})


def _lookup_top1(ctx: SectionContext, row: dict[str, Any]) -> float:
    """Accuracy of a calibration cell: a top1 row of the same cell (scaling does not change argmax),
    else the argmax of its logits."""
    cond = _without(row, "scaling")
    for other in ctx.all_rows:
        if (other["metric"] == "top1" and other["model"] == row["model"] and other["dataset"] == row["dataset"]
                and _without(other, "scaling") == cond):
            return _num(other["value"])
    rel = row.get("samples")
    data = ctx.store.load(rel) if rel else None
    if (isinstance(data, dict) and {"logits", "labels"} <= data.keys() and data["logits"].ndim == 2
            and data["labels"].shape == data["logits"].shape[:1]):
        return float(np.mean(data["logits"].argmax(1) == data["labels"]))
    return math.nan


def _reliability(ax: Any, logits: np.ndarray, labels: np.ndarray, title: str) -> None:
    bins = calibration_bins(softmax(logits), labels, n_bins=15)
    edges, full = bins["edges"], bins["counts"] > 0  # (B+1,), (B,)
    left, width = edges[:-1][full], np.diff(edges)[full]
    acc, conf = bins["accuracy"][full], bins["confidence"][full]
    ax.bar(left, acc, width, align="edge", color="#4c78a8", edgecolor="white", linewidth=0.4, label="accuracy")
    ax.bar(left, conf - acc, width, bottom=acc, align="edge", color="#e45756", alpha=0.35, edgecolor="#e45756",
           linewidth=0.4, label="gap to confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="#444444", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)
    ax.legend(loc="upper left")


@property_view("calibration", group_by="dataset")
def calibration_plots(ctx: SectionContext) -> list[Plot]:
    for r in ctx.rows:
        if r["metric"] == "temperature" and (r.get("extra") or {}).get("temperature_at_bound"):
            bounds = (r.get("extra") or {}).get("temperature_bounds") or "?"
            ctx.note(f"The temperature fitted for {_describe(r)} lies on its search bound (T={fmt(r['value'], 4)}, "
                     f"bounds {bounds}): the NLL optimum is outside the range (a near-chance or perfectly "
                     "separable model), so its scaling=temperature numbers use the bound.")
    ece = [r for r in ctx.rows if r["metric"] == "ece"]
    plots: list[Plot] = []
    points = [(r, _lookup_top1(ctx, r)) for r in ece]
    points = [(r, acc) for r, acc in points if not math.isnan(acc) and not math.isnan(_num(r["value"]))]
    if points:
        plots.append(Plot("ECE vs accuracy", lambda fig: _ece_scatter(fig, points, ctx.styles), (6.4, 3.4),
                          "One point per model, dataset and condition; hollow markers: after temperature scaling."))
    pairs: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in ece:
        pairs[(r["model"], r["dataset"], _without(r, "scaling"))][_scaling(r)] = r
    ranked = sorted(pairs.items(), key=lambda kv: (min(_badness(r) for r in kv[1].values()), kv[0]))

    def draw(cell: dict[str, dict[str, Any]]) -> Callable[[Any], bool]:
        def fill(fig: Any) -> bool:
            scalings = sorted(cell, key=lambda s: (s != "none", s))
            axes = fig.subplots(1, len(scalings), squeeze=False)[0]
            drawn = False
            for ax, scaling in zip(axes, scalings):
                row = cell[scaling]
                title = f"scaling={scaling}: ECE {fmt(row['value'], 3)}"
                data = ctx.samples(row, ("logits", "labels"), "reliability diagram")
                if not isinstance(data, str):
                    try:
                        _reliability(ax, data["logits"], data["labels"], title)
                        drawn = True
                        continue
                    except ValueError as err:  # readable file, unusable arrays (shapes, NaN): say so, go on
                        data = ctx.bad_samples(row, err, "reliability diagram")
                        ax.clear()
                _panel_message(ax, "not drawn:\n" + data.replace("Per-sample file ", "per-sample file\n"))
                ax.set_title(title)
            return drawn
        return fill

    for (model, dataset, cond), cell in ranked:
        plots.append(Plot(f"Reliability: {model} · {dataset}" + (f" · {cond}" if cond else ""), draw(cell),
                          (3.3 * len(cell) + 0.2, 3.1),
                          "Before and after temperature scaling; 15 equal-width confidence bins."))
    return plots


def _ece_scatter(fig: Any, points: list[tuple[dict[str, Any], float]], styles: ModelStyles) -> None:
    ax = fig.add_subplot()
    datasets = sorted({r["dataset"] for r, _ in points})
    seen: set[str] = set()
    for row, acc in points:
        model, hollow = row["model"], _scaling(row) not in ("none", "")
        color = styles.color(model)
        ax.scatter([acc], [_num(row["value"])], s=28, marker=_MARKERS[datasets.index(row["dataset"]) % len(_MARKERS)],
                   facecolors="none" if hollow else color, edgecolors=color, linewidths=1.1,
                   label=None if model in seen else model)
        seen.add(model)
    for i, dataset in enumerate(datasets):  # marker legend for datasets
        ax.scatter([], [], marker=_MARKERS[i % len(_MARKERS)], color="#666666", label=dataset, s=20)
    ax.set(xlabel="top-1 accuracy", ylabel="ECE")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))


def _roc_and_hist(ctx: SectionContext, cell: list[dict[str, Any]]) -> Callable[[Any], bool]:
    from sklearn.metrics import roc_curve

    def fill(fig: Any) -> bool:
        curves = []
        for row in cell:
            data = ctx.samples(row, ("scores_in", "scores_out"), "ROC curve and score histogram")
            if isinstance(data, str):
                continue
            s_in, s_out = data["scores_in"].ravel(), data["scores_out"].ravel()  # (N,), (M,)
            y = np.r_[np.ones(s_in.size), np.zeros(s_out.size)]
            try:
                fpr, tpr, _ = roc_curve(y, np.r_[s_in, s_out])  # (K,), (K,) nondecreasing
            except ValueError as err:  # NaN scores, or one of the two sets empty
                ctx.bad_samples(row, err, "ROC curve and score histogram")
                continue
            if fpr.size > ROC_POINTS:  # a fixed grid keeps the SVG small for large N; staircase kept
                grid = np.linspace(0.0, 1.0, ROC_POINTS)
                fpr, tpr = grid, tpr[np.searchsorted(fpr, grid, side="right") - 1]
            curves.append((row, s_in, s_out, fpr, tpr))
        if not curves:
            return False
        axes = fig.subplots(1, 1 + min(len(curves), MAX_HIST_MODELS), squeeze=False)[0]
        roc = axes[0]
        for row, _, _, fpr, tpr in curves:
            roc.plot(fpr, tpr, color=ctx.styles.color(row["model"]), lw=1.2,
                     label=f"{row['model']} ({row['metric']} {fmt(row['value'], 3)})")
        roc.plot([0, 1], [0, 1], ls=":", color="#888888", lw=0.8)
        roc.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="FPR (OOD accepted)", ylabel="TPR (ID accepted)", title="ROC")
        roc.legend(loc="lower right", fontsize=6.5)
        for ax, (row, s_in, s_out, _, _) in zip(axes[1:], curves):
            edges = np.histogram_bin_edges(np.r_[s_in, s_out], bins=40)
            ax.hist(s_in, edges, density=True, histtype="stepfilled", alpha=0.55, color="#4c78a8", label="ID")
            ax.hist(s_out, edges, density=True, histtype="stepfilled", alpha=0.55, color="#e45756", label="OOD")
            ax.set(title=row["model"], xlabel="score (higher = more ID)", yticks=[])
            ax.legend(loc="upper left")
        return True

    return fill


@property_view("ood", group_by="score")
def ood_plots(ctx: SectionContext) -> list[Plot]:
    rows = [r for r in ctx.rows if r["metric"] == "auroc" and r.get("samples")]
    cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        cells[(r["dataset"], r["condition"])].append(r)
    plots = []
    for (dataset, cond), cell in sorted(cells.items(), key=lambda kv: (min(map(_badness, kv[1])), kv[0])):
        cell = sorted(cell, key=_badness)  # histograms for the worst-separated models
        n_hist = min(len(cell), MAX_HIST_MODELS)
        plots.append(Plot(f"{dataset} · {cond or 'clean'}", _roc_and_hist(ctx, cell), (2.9 * (1 + n_hist), 2.7),
                          "Left: ROC, in-distribution as positive. Right: score densities, ID vs OOD "
                          f"(the {n_hist} least separated models)."))
    return plots


def _severity(row: dict[str, Any]) -> float | None:
    try:
        return float(parse_condition(row["condition"])["severity"])
    except (KeyError, ValueError):
        return None  # no or non-numeric severity: the row stays in the table only


def _ci_bounds(row: dict[str, Any]) -> tuple[float, float]:
    ci, value = row.get("ci") or (None, None), _num(row.get("value"))
    return (value if ci[0] is None else float(ci[0]), value if ci[1] is None else float(ci[1]))


def _clean_top1(ctx: SectionContext, model: str, dataset: str) -> float:
    """Clean accuracy of a model on a dataset: a top1 row of this property without corruption keys,
    else the accuracy property's primary cell."""
    candidates = [r for r in ctx.rows if r["metric"] == "top1" and r["model"] == model and r["dataset"] == dataset
                  and not {"corruption", "severity"} & parse_condition(r["condition"]).keys()]
    candidates = candidates or [r for r in ctx.all_rows if r["property"] == "accuracy" and r["metric"] == "top1"
                                and r["model"] == model and r["dataset"] == dataset]
    best = primary_row(candidates, ctx.run)
    return _num(best["value"]) if best else math.nan


@property_view("corruption2d", group_by="corruption")
@property_view("corruption3d", group_by="corruption")
def corruption_plots(ctx: SectionContext) -> list[Plot]:
    rows = [r for r in ctx.rows if r["metric"] == "top1" and _severity(r) is not None]
    families: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        families[(r["dataset"], _without(r, "severity"))][r["model"]].append(r)
    clean = {(m, d): _clean_top1(ctx, m, d) for (d, _), per in families.items() for m in per}

    def drop(item: tuple[tuple[str, str], dict[str, list[dict[str, Any]]]]) -> float:
        (dataset, _), per_model = item
        drops = [clean[(m, dataset)] - _num(r["value"]) for m, rs in per_model.items() for r in rs]
        drops = [d for d in drops if not math.isnan(d)]
        if drops:
            return -float(np.mean(drops))
        accs = [v for rs in per_model.values() for v in (_num(r["value"]) for r in rs) if not math.isnan(v)]
        return float(np.mean(accs)) if accs else math.inf

    ranked = sorted(families.items(), key=lambda kv: (drop(kv), kv[0]))
    by_dataset: dict[str, list[Any]] = defaultdict(list)
    for item in ranked:
        by_dataset[item[0][0]].append(item)

    def draw(chunk: Sequence[Any]) -> Callable[[Any], None]:
        def fill(fig: Any) -> None:
            ncols = min(len(chunk), 4)
            axes = fig.subplots((len(chunk) + ncols - 1) // ncols, ncols, squeeze=False, sharey=True).ravel()
            for ax, ((dataset, family), per_model) in zip(axes, chunk):
                for model in ctx.styles.sort(per_model):
                    pts = sorted(per_model[model], key=_severity)
                    x = [0.0] + [_severity(r) for r in pts]
                    y = [clean[(model, dataset)]] + [_num(r["value"]) for r in pts]
                    ax.plot(x, y, marker="o", ms=3, lw=1.2, color=ctx.styles.color(model), label=model)
                    lo, hi = zip(*map(_ci_bounds, pts))
                    ax.fill_between(x[1:], lo, hi, color=ctx.styles.color(model), alpha=0.12, lw=0)
                ax.set_title(family.replace("corruption=", ""), fontsize=8)
                ax.set_xticks(sorted({0.0} | {_severity(r) for rs in per_model.values() for r in rs}))
                ax.set_xlabel("severity (0 = clean)")
                _limit_axis(ax.set_ylim, "top1")
            for ax in axes[len(chunk):]:
                ax.set_visible(False)
            axes[0].set_ylabel("top1")
            axes[0].legend(loc="lower left")
        return fill

    plots = []
    for dataset, items in by_dataset.items():
        for i, chunk in enumerate(_chunks(items, PANELS_PER_FIGURE)):
            nrows = (len(chunk) + 3) // 4
            part = f" ({i + 1})" if len(items) > PANELS_PER_FIGURE else ""
            plots.append(Plot(f"Accuracy vs severity · {dataset}{part}", draw(chunk),
                              (2.6 * min(len(chunk), 4) + 0.4, 2.4 * nrows + 0.3),
                              "Families ordered by mean accuracy drop; shading: 95% CI."))
    return plots


@property_view("factor", group_by="factor")
def factor_plots(ctx: SectionContext) -> list[Plot]:
    plots: list[Plot] = []
    er = [r for r in ctx.rows if r["metric"] == "effective_robustness"]
    if er:
        plots.append(Plot("Effective robustness", lambda fig: _dot_plot(fig, er, ctx.styles, "effective robustness"),
                          (6.4, 0.9 + 0.22 * len({_cell_label(r) for r in er})),
                          "Accuracy above the fit over reference models (0 = as robust as expected from ID accuracy)."))
    counterexamples = _counterexample_plot(ctx)
    if counterexamples is not None:
        plots.append(counterexamples)
    # world interventions (factor=F;value=V): one chart per factor, a bar per value, the canonical
    # renders (factor=canonical) first; ImageNet-X (factor=F, no value): one chart, a bar per factor
    found: dict[tuple[str, str], dict[tuple[str, str], list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    canonical: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in ctx.rows:
        cond = parse_condition(r["condition"])
        if r["metric"] != "top1" or "factor" not in cond:
            continue
        if "value" in cond:
            found[(r["dataset"], cond["factor"])][(cond["value"], r["model"])].append(r)
        elif cond["factor"] == "canonical":
            canonical[(r["dataset"], r["model"])].append(r)
        else:
            found[(r["dataset"], "")][(cond["factor"], r["model"])].append(r)
    for (dataset, factor), cells in found.items():
        for (ds, model), rs in canonical.items():
            if ds == dataset and factor:
                cells[("canonical", model)] = rs
    # one row per cell: the run's first template set (a model's other heads are in the table)
    factors = {key: {cell: primary_row(rs, ctx.run) for cell, rs in cells.items()} for key, cells in found.items()}

    def spread(cells: dict[tuple[str, str], dict[str, Any]]) -> float:
        values = [_num(r["value"]) for r in cells.values() if not math.isnan(_num(r["value"]))]
        return max(values) - min(values) if values else 0.0

    for (dataset, factor), cells in sorted(factors.items(), key=lambda kv: (-spread(kv[1]), kv[0])):
        groups = sorted({v for v, _ in cells}, key=lambda v: (v != "canonical", _natural_key(v)))
        models = ctx.styles.sort(m for _, m in cells)
        what = f"value of {factor} (canonical: the unchanged scenes)" if factor else "annotated factor"
        plots.append(Plot(f"{factor or 'factors'} · {dataset}", _factor_bars(groups, cells, models, ctx.styles),
                          (max(4.5, 1.0 + 0.25 * len(groups) * len(models)), 2.7),
                          f"Top-1 accuracy per {what}; charts ordered by spread."))
    return plots


MAX_COUNTEREXAMPLE_MODELS = 6
COUNTEREXAMPLES_PER_MODEL = 3


def _counterexample_plot(ctx: SectionContext) -> Plot | None:
    """Canonical and flipped renders of the counterexample search, a row per model: the minimal
    combined change first, then single factors."""
    rows = [r for r in ctx.rows if r["metric"] == "flip_rate" and (r.get("extra") or {}).get("counterexamples")]
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    models = ctx.styles.sort(by_model)[:MAX_COUNTEREXAMPLE_MODELS]
    if not models:
        return None

    def chosen(model: str) -> list[dict[str, Any]]:
        heads = {join_condition({k: v for k, v in parse_condition(r["condition"]).items() if k != "factor"})
                 for r in by_model[model]}
        head = primary_row([{"condition": h} for h in heads], ctx.run)["condition"]
        mine = [r for r in by_model[model]
                if join_condition({k: v for k, v in parse_condition(r["condition"]).items() if k != "factor"}) == head]
        mine.sort(key=lambda r: (parse_condition(r["condition"])["factor"] != "combined", r["condition"]))
        return mine[:COUNTEREXAMPLES_PER_MODEL]  # the first counterexample of each row

    picks = {m: chosen(m) for m in models}
    ncols = max(len(p) for p in picks.values())

    def fill(fig: Any) -> bool:
        axes = fig.subplots(len(models), 2 * ncols, squeeze=False)
        drawn = False
        for i, model in enumerate(models):
            for ax in axes[i]:
                ax.set_axis_off()
            for j, row in enumerate(picks[model]):
                data = ctx.samples(row, ("canonical_images", "flipped_images"), "counterexample images")
                if isinstance(data, str):
                    continue
                cx = row["extra"]["counterexamples"][0]
                factor = parse_condition(row["condition"])["factor"]
                left, right = axes[i][2 * j], axes[i][2 * j + 1]
                left.imshow(data["canonical_images"][0], interpolation="nearest")
                right.imshow(data["flipped_images"][0], interpolation="nearest")
                left.set_title(f"{model}\n{cx['label']} ✓" if j == 0 else f"{cx['label']} ✓", fontsize=7)
                right.set_title(f"{factor}: → {cx['flipped_prediction']}", fontsize=7)
                right.text(0.5, -0.04, "\n".join(cx["changes"]), transform=right.transAxes, ha="center", va="top",
                           fontsize=6.5)
                drawn = True
        return drawn

    return Plot("Counterexamples", fill, (1.6 * 2 * ncols, 2.0 * len(models)),
                "Left: a canonical scene the model classifies correctly; right: the smallest change the "
                "hypothesis search found that flips its prediction (combined factors first).")


def _factor_bars(groups: list[str], cells: dict[tuple[str, str], dict[str, Any]], models: list[str],
                 styles: ModelStyles) -> Callable[[Any], None]:
    return lambda fig: _grouped_bars(fig.add_subplot(), groups, cells, models, styles, "top1")


def _dot_plot(fig: Any, rows: list[dict[str, Any]], styles: ModelStyles, xlabel: str) -> None:
    """One row per cell, one marker per model with its CI, and a zero line."""
    ax = fig.add_subplot()
    labels = sorted({_cell_label(r) for r in rows}, key=_natural_key)
    models = styles.sort(r["model"] for r in rows)
    offset = 0.6 / max(len(models), 1)
    for j, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        y = [labels.index(_cell_label(r)) + (j - (len(models) - 1) / 2) * offset for r in mine]
        x = [_num(r["value"]) for r in mine]
        ax.errorbar(x, y, xerr=_yerr(x, [r.get("ci") for r in mine]), fmt=styles.marker(model), ms=4,
                    color=styles.color(model), elinewidth=0.8, capsize=1.5, label=model)
    ax.axvline(0, color="#444444", lw=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))


@property_view("shape_bias")
def shape_bias_plots(ctx: SectionContext) -> list[Plot]:
    rows = [r for r in ctx.rows if r["metric"] == "shape_bias"]
    plots = []
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == dataset]
        per_class = [r for r in mine if "class" in parse_condition(r["condition"])]
        if not per_class:
            continue
        classes = sorted({parse_condition(r["condition"])["class"] for r in per_class})
        plots.append(Plot(f"Shape vs texture decisions · {dataset}", _shape_plot(mine, per_class, classes, ctx.styles),
                          (6.4, 1.1 + 0.24 * len(classes)),
                          "Per class, one marker per model (model-vs-human style); vertical lines: the "
                          "model's overall shape bias (or its mean over classes)."))
    return plots


def _shape_plot(rows: list[dict[str, Any]], per_class: list[dict[str, Any]], classes: list[str],
                styles: ModelStyles) -> Callable[[Any], None]:
    def fill(fig: Any) -> None:
        ax = fig.add_subplot()
        for model in styles.sort(r["model"] for r in per_class):
            mine = [r for r in per_class if r["model"] == model]
            x = [_num(r["value"]) for r in mine]
            y = [classes.index(parse_condition(r["condition"])["class"]) for r in mine]
            overall = [r for r in rows if r["model"] == model and "class" not in parse_condition(r["condition"])]
            finite = [v for v in x if not math.isnan(v)]
            if overall:
                level = _num(overall[0]["value"])
            else:
                level = float(np.mean(finite)) if finite else math.nan
            ax.scatter(x, y, marker=styles.marker(model), color=styles.color(model), s=26, zorder=3,
                       label=f"{model} ({'overall' if overall else 'mean'} {fmt(level, 3)})")
            if not math.isnan(level):
                ax.axvline(level, color=styles.color(model), ls="--", lw=0.9)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_ylim(len(classes) - 0.5, -0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("shape bias: fraction of shape decisions   (0 = texture, 1 = shape)")
        top = ax.secondary_xaxis("top", functions=(lambda v: 1 - v, lambda v: 1 - v))
        top.set_xlabel("fraction of texture decisions", fontsize=7.5)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fill


@property_view("retrieval")
def retrieval_plots(ctx: SectionContext) -> list[Plot]:
    rows = [r for r in ctx.rows if _RECALL.search(r["metric"])]
    by_cell: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by_cell[(r["dataset"], r["condition"])][(r["metric"], r["model"])] = r

    def rank(item: tuple[tuple[str, str], dict[tuple[str, str], dict[str, Any]]]) -> tuple[Any, ...]:
        (dataset, condition), cells = item  # clean captions first, then the worst cells
        return condition != "", min(map(_badness, cells.values())), dataset, condition

    plots = []
    for (dataset, condition), cells in sorted(by_cell.items(), key=rank):
        metrics = sorted({m for m, _ in cells}, key=lambda m: (m.split("_")[0], int(_RECALL.search(m)[1]), m))
        models = ctx.styles.sort(m for _, m in cells)
        label = dataset + (f" · {condition}" if condition else "")
        plots.append(Plot(f"Recall@K · {label}", _recall_bars(metrics, cells, models, ctx.styles),
                          (max(4.5, 1.0 + 0.22 * len(metrics) * len(models)), 2.7),
                          "Recall@1/5/10, image→text (i2t) and text→image (t2i); error bars: 95% CI."))
    return plots


def _recall_bars(metrics: list[str], cells: dict[tuple[str, str], dict[str, Any]], models: list[str],
                 styles: ModelStyles) -> Callable[[Any], None]:
    return lambda fig: _grouped_bars(fig.add_subplot(), metrics, cells, models, styles, metrics[0], ylabel="recall")


LMM_CLASSES_PER_PANEL = 12  # classes per per-class panel; more are chunked into further figures
LMM_HELP_HURT = 5  # cells named each way in "where the LMM helps or hurts"
_LMM_METRICS = ("clip_two_way_accuracy", "lmm_accuracy", "lmm_gain")
_CLIP_SERIES = "CLIP two-way"


class _SeriesStyles(ModelStyles):
    """Colours for bar series that are not models, so they are not read as one."""

    def color(self, model: str) -> str:
        return _LEVEL_PALETTE[self.order.get(model, 0) % len(_LEVEL_PALETTE)]


def _lmm_series(row: dict[str, Any]) -> str:
    if row["metric"] == "clip_two_way_accuracy":
        return _CLIP_SERIES
    return "LMM · " + parse_condition(row["condition"]).get("scoring", "?")


def _lmm_class(row: dict[str, Any]) -> str | None:
    return parse_condition(row["condition"]).get("class")


def _lmm_cell(row: dict[str, Any]) -> str:
    """Where a gain was measured: the split, its class if any, the scoring."""
    cond = parse_condition(row["condition"])
    return " · ".join([row["dataset"], *([f"class {cond['class']}"] if "class" in cond else []),
                       cond.get("scoring", "?")])


def lmm_help_hurt(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Among one (model, LMM) pair's rows (position-bias rows left out), the ``lmm_gain`` cells whose 95% CI
    excludes 0: (the largest gains first, the largest losses first)."""
    gains = [r for r in rows if r["metric"] == "lmm_gain" and r.get("ci") and None not in r["ci"]]
    helps = sorted((r for r in gains if r["ci"][0] > 0), key=lambda r: (-_num(r["value"]), _lmm_cell(r)))
    hurts = sorted((r for r in gains if r["ci"][1] < 0), key=lambda r: (_num(r["value"]), _lmm_cell(r)))
    return helps[:LMM_HELP_HURT], hurts[:LMM_HELP_HURT]


def _help_hurt_text(rows: Sequence[dict[str, Any]]) -> str:
    def listed(cells: list[dict[str, Any]]) -> str:
        return "; ".join(f"{_lmm_cell(r)} {_num(r['value']):+.3f} {fmt_ci(r['ci'])}" for r in cells) or "none"

    helps, hurts = lmm_help_hurt(rows)
    return (f"Where the LMM helps (lmm_gain, 95% CI above 0; largest first): {listed(helps)}. "
            f"Where it hurts (CI below 0): {listed(hurts)}.")


def _lmm_bars(rows: list[dict[str, Any]], group_of: Callable[[dict[str, Any]], str],
              groups: Sequence[str]) -> Callable[[Any], None]:
    cells = {(group_of(r), _lmm_series(r)): r for r in rows}
    series = sorted({s for _, s in cells}, key=lambda s: (s != _CLIP_SERIES, s))

    def fill(fig: Any) -> None:
        ax = fig.add_subplot()
        if not cells:  # the figure still carries the help/hurt caption
            _panel_message(ax, "no per-split accuracy rows")
            return
        _grouped_bars(ax, groups, cells, series, _SeriesStyles(series), "lmm_accuracy", ylabel="two-option accuracy")
        ax.axhline(0.5, color="#777777", lw=0.8, ls=":")  # chance with two options
    return fill


@property_view("lmm")
def lmm_plots(ctx: SectionContext) -> list[Plot]:
    """Per (CLIP model, LMM): LMM vs CLIP two-way accuracy per split, then per class (hardest classes
    first). The position-bias rows (``true_option=``) stay in the table."""
    pairs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in ctx.rows:
        cond = parse_condition(r["condition"])
        if r["metric"] in _LMM_METRICS and "true_option" not in cond:
            pairs[(r["model"], cond.get("lmm", "?"))].append(r)
    model_rank = {m: i for i, m in enumerate(ctx.styles.sort(m for m, _ in pairs))}
    split_plots, class_plots = [], []
    for (model, lmm), rows in sorted(pairs.items(), key=lambda kv: (model_rank[kv[0][0]], kv[0][1])):
        bars = [r for r in rows if r["metric"] != "lmm_gain"]
        per_split = [r for r in bars if _lmm_class(r) is None]
        datasets = sorted({r["dataset"] for r in per_split}, key=_natural_key)
        n_series = len({_lmm_series(r) for r in per_split})
        split_plots.append(Plot(
            f"LMM vs CLIP per split · {model} · LMM {lmm}", _lmm_bars(per_split, lambda r: r["dataset"], datasets),
            (max(5.0, 0.9 + max(0.28 * n_series, 1.1) * len(datasets)), 3.2),
            "Accuracy on the two-option question (true class vs the CLIP's own distractor): the LMM per "
            "scoring, and the CLIP choosing between the same two options; error bars: 95% CI (Wilson); "
            "dotted line: chance. " + _help_hurt_text(rows)))
        by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in bars:
            if _lmm_class(r) is not None:
                by_dataset[r["dataset"]].append(r)
        for dataset, class_rows in by_dataset.items():
            clip = {_lmm_class(r): _num(r["value"]) for r in class_rows if r["metric"] == "clip_two_way_accuracy"}
            clip = {c: v for c, v in clip.items() if not math.isnan(v)}
            # hardest for the CLIP first: the study asks whether the LMM helps on hard classes
            classes = sorted({_lmm_class(r) for r in class_rows}, key=lambda c: (clip.get(c, math.inf), c))
            chunks = _chunks(classes, LMM_CLASSES_PER_PANEL)
            n_series = len({_lmm_series(r) for r in class_rows})
            for i, chunk in enumerate(chunks):
                part = f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""
                plot = Plot(f"LMM vs CLIP per class · {dataset} · {model} · LMM {lmm}{part}",
                            _lmm_bars([r for r in class_rows if _lmm_class(r) in chunk], _lmm_class, chunk),
                            (max(5.0, 0.9 + max(0.28 * n_series, 0.75) * len(chunk)), 3.2),
                            "Classes ordered by the CLIP's two-way accuracy, hardest first; error bars: 95% CI "
                            "(Wilson); dotted line: chance.")
                # each split's hardest classes before any split's next chunk (figures are capped)
                class_plots.append(((i, model_rank[model], lmm, _natural_key(dataset)), plot))
    return split_plots + [plot for _, plot in sorted(class_plots, key=lambda kv: kv[0])]


# --------------------------------------------------------------------------------------------
# the six-factor view


def _preference_penalty(condition: str, default_templates: str | None) -> int:
    preferred = dict(PREFERRED_CONDITION, **({"templates": default_templates} if default_templates else {}))
    cond = parse_condition(condition)
    return sum(1 for k, v in cond.items() if k in preferred and v != preferred[k])


def primary_row(rows: Sequence[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any] | None:
    """The row a summary quotes among the ways one cell was measured: the clean condition, the
    run's first template set, unscaled logits, the MCM score."""
    templates = (run.get("config") or {}).get("templates") or [None]
    return min(rows, key=lambda r: (_preference_penalty(r["condition"], templates[0]), len(r["condition"]),
                                    r["condition"]), default=None)


def id_dataset(rows: Sequence[dict[str, Any]]) -> str:
    names = {r["dataset"] for r in rows if r["metric"] == "top1"}
    return "imagenet" if "imagenet" in names else "world:test"


def id_accuracy(rows: Sequence[dict[str, Any]], run: dict[str, Any]) -> dict[str, float]:
    """Per model: top1 on the ID set (``imagenet`` if measured, else ``world:test``), clean cell."""
    dataset = id_dataset(rows)
    top1 = [r for r in rows if r["metric"] == "top1" and r["dataset"] == dataset
            and not SUBCELL_KEYS & parse_condition(r["condition"]).keys()]
    accuracy_rows = [r for r in top1 if r["property"] == "accuracy"] or top1
    out = {}
    for model in sorted({r["model"] for r in accuracy_rows}):
        best = primary_row([r for r in accuracy_rows if r["model"] == model], run)
        if best is not None and not math.isnan(_num(best["value"])):
            out[model] = _num(best["value"])
    return out


def _series_value(rows: list[dict[str, Any]], run: dict[str, Any], common_sub: set[str] | None) -> float:
    """A model's headline number for one (property, metric, dataset): its primary condition, averaged
    over sub-cells (classes, corruptions, factor values) when the cell is split."""
    split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        cond = parse_condition(r["condition"])
        split[join_condition({k: v for k, v in cond.items() if k not in SUBCELL_KEYS})].append(r)
    best_main = primary_row([{"condition": c} for c in split], run)
    if best_main is None:
        return math.nan
    chosen = split[best_main["condition"]]
    whole = [r for r in chosen if not _sub_part(r)]
    if whole:  # the cell was measured as a whole (e.g. overall shape bias beside per-class rows)
        return _num(whole[0]["value"])
    values = [_num(r["value"]) for r in chosen if common_sub is None or _sub_part(r) in common_sub]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _sub_part(row: dict[str, Any]) -> str:
    return join_condition({k: v for k, v in parse_condition(row["condition"]).items() if k in SUBCELL_KEYS})


def factor_series(rows: Sequence[dict[str, Any]], run: dict[str, Any],
                  models: Sequence[str]) -> list[tuple[str, str, dict[str, float]]]:
    """``(label, metric, {model: value})`` per headline metric and dataset, excluding ID accuracy itself."""
    id_set = id_dataset(rows)
    by_prop: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["model"] in models:
            by_prop[r["property"]].append(r)
    series = []
    for prop in ordered_properties(by_prop):
        metric = headline_metric(prop, by_prop[prop])
        for dataset in sorted({r["dataset"] for r in by_prop[prop] if r["metric"] == metric}):
            if metric == "top1" and dataset == id_set and prop == "accuracy":
                continue  # the x axis
            cell = [r for r in by_prop[prop] if r["metric"] == metric and r["dataset"] == dataset]
            per_model = {m: [r for r in cell if r["model"] == m] for m in models}
            subs = [{_sub_part(r) for r in rs} for rs in per_model.values() if rs]
            common = set.intersection(*subs) if subs else set()
            values = {m: _series_value(rs, run, common) for m, rs in per_model.items() if rs}
            values = {m: v for m, v in values.items() if not math.isnan(v)}
            if len(values) >= 2:
                series.append((f"{prop}: {metric} · {dataset}", metric, values))
    return series


def explaining_factor(values: dict[str, float], levels: dict[str, dict[str, str]], factors: Sequence[str]) -> str:
    """The factor whose levels explain most of the metric's variance across models (eta squared,
    between-level over total sum of squares); ties go to the first in ``FACTOR_KEYS`` order."""
    y = np.array(list(values.values()))
    total = float(np.sum((y - y.mean()) ** 2))

    def eta2(factor: str) -> float:
        groups: dict[str, list[float]] = defaultdict(list)
        for model, v in values.items():
            groups[levels[model].get(factor, "unknown")].append(v)
        between = sum(len(g) * (np.mean(g) - y.mean()) ** 2 for g in groups.values())
        return float(between / total) if total > 0 else 0.0

    return max(factors, key=lambda f: (round(eta2(f), 9), -list(factors).index(f)))


def _factor_scatter(values: dict[str, float], acc: dict[str, float], levels: dict[str, dict[str, str]],
                    factor: str, metric: str, styles: ModelStyles) -> Callable[[Any], None]:
    def fill(fig: Any) -> None:
        ax = fig.add_subplot()
        models = [m for m in styles.sort(values) if m in acc]
        for k, level in enumerate(sorted({levels[m].get(factor, "unknown") for m in models})):
            group = [m for m in models if levels[m].get(factor, "unknown") == level]
            x = np.array([acc[m] for m in group])  # (G,)
            y = np.array([values[m] for m in group])  # (G,)
            color = _LEVEL_PALETTE[k % len(_LEVEL_PALETTE)]
            ax.scatter(x, y, color=color, s=26, label=level, zorder=3)
            if len(models) <= _MAX_POINT_LABELS:
                for model, xi, yi in zip(group, x, y):
                    ax.annotate(model, (xi, yi), xytext=(3, 3), textcoords="offset points", fontsize=6,
                                color="#444444")
            if len(group) >= 2 and np.ptp(x) > 0:
                slope, intercept = np.polyfit(x, y, 1)
                xs = np.array([x.min(), x.max()])
                ax.plot(xs, slope * xs + intercept, color=color, lw=1.0)
        ax.set_xlabel("ID top1")
        ax.set_ylabel(metric)
        ax.legend(title=factor.replace("_", " "), title_fontsize=7, fontsize=7, loc="best")
    return fill


def six_factor_view(rows: Sequence[dict[str, Any]], run: dict[str, Any], styles: ModelStyles,
                    renderer: FigureRenderer) -> dict[str, Any]:
    models_meta = {m: {k: str(v) for k, v in (info.get("metadata") or {}).items() if k in FACTOR_KEYS}
                   for m, info in (run.get("models") or {}).items()}
    acc = id_accuracy(rows, run)
    models = [m for m in styles.sort(models_meta) if m in acc]
    view: dict[str, Any] = {"figures": [], "table": None, "note": None, "id_dataset": id_dataset(rows)}
    if len(models) < 2:
        view["note"] = (f"The six-factor comparison needs at least 2 models with metadata and a top1 on "
                        f"{view['id_dataset']}; this run has {len(models)}.")
        return view
    factors = [f for f in FACTOR_KEYS if len({models_meta[m].get(f, "unknown") for m in models}) >= 2]
    series = factor_series(rows, run, models)
    if not factors:
        view["note"] = "All models share the same value of every factor: nothing to compare."
    for label, metric, values in series[:MAX_FIGURES] if factors else []:
        factor = explaining_factor(values, models_meta, factors)
        plot = Plot(label, _factor_scatter(values, acc, models_meta, factor, metric, styles), (3.4, 2.7),
                    f"Coloured by {factor.replace('_', ' ')}, the factor that explains most of the spread; "
                    "lines: least-squares fit per level with at least 2 models.")
        figure = renderer.render(plot)
        if figure:
            view["figures"].append(figure)
    columns = [("ID top1", acc)] + [(label, values) for label, _, values in series]
    table_rows = []
    for factor in FACTOR_KEYS:
        for level in sorted({models_meta[m].get(factor, "unknown") for m in models}):
            group = [m for m in models if models_meta[m].get(factor, "unknown") == level]
            cells = []
            for _, values in columns:
                vals = [values[m] for m in group if m in values]
                cells.append(fmt(float(np.mean(vals)), 3) if vals else "—")
            table_rows.append({"factor": factor, "level": level, "n": len(group), "models": ", ".join(group),
                               "cells": cells})
    view["table"] = {"columns": [c for c, _ in columns], "rows": table_rows}
    return view


# --------------------------------------------------------------------------------------------
# assembling the page


def ordered_properties(props: Iterable[str]) -> list[str]:
    present = set(props)
    return [p for p in PROPERTY_ORDER if p in present] + sorted(present - set(PROPERTY_ORDER))


def _slug(text: str, used: set[str]) -> str:
    base = "prop-" + (re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x")
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def _row_view(row: dict[str, Any]) -> dict[str, Any]:
    hib = higher_is_better(row["metric"], row)
    gate = row.get("gate") or {}
    value = row.get("value")
    return {
        "model": row["model"], "dataset": row["dataset"], "condition": row["condition"], "metric": row["metric"],
        "arrow": "↑" if hib else "↓" if hib is False else "",
        "direction": "higher is better" if hib else "lower is better" if hib is False else "direction unknown",
        "value": fmt(value), "raw": "" if value is None else repr(float(value)), "ci": fmt_ci(row.get("ci")),
        "n": row.get("n", ""), "verdict": verdict_of(row), "verdict_label": VERDICT_LABEL[verdict_of(row)],
        "message": gate.get("message") or "", "gate_kind": gate.get("kind", ""),
    }


def _gate_message(row: dict[str, Any]) -> str:
    gate = row["gate"]
    if gate.get("message"):
        return gate["message"]
    ci = f" (95% CI {fmt_ci(row.get('ci'))})" if row.get("ci") else ""
    return f"{row['metric']}={fmt(row.get('value'))}{ci} is {gate['verdict']} {describe_cell(row)}."


def _table_groups(rows: list[dict[str, Any]], group_by: str, styles: ModelStyles) -> list[dict[str, Any]]:
    def group_of(row: dict[str, Any]) -> str:
        if group_by == "dataset":
            return f"dataset {row['dataset']}"
        value = parse_condition(row["condition"]).get(group_by)
        return f"{group_by} = {value}" if value is not None else f"other conditions"

    model_rank = {m: i for i, m in enumerate(styles.sort(r["model"] for r in rows))}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (_natural_key(r["dataset"]), _natural_key(r["condition"]),
                                         _natural_key(r["metric"]), model_rank[r["model"]])):
        groups[group_of(r)].append(r)
    return [{"title": title, "rows": [_row_view(r) for r in grouped]}
            for title, grouped in sorted(groups.items(), key=lambda kv: _natural_key(kv[0]))]


def _headline_text(rows: list[dict[str, Any]], metric: str | None, run: dict[str, Any]) -> str:
    """A model's headline number for a property: per dataset its primary cell (as in the six-factor
    view), then the mean over datasets."""
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["metric"] == metric:
            by_dataset[r["dataset"]].append(r)
    values = {d: _series_value(rs, run, None) for d, rs in sorted(by_dataset.items())}
    finite = [v for v in values.values() if not math.isnan(v)]
    if not finite:
        return f"{metric} n/a"
    where = f" · {next(iter(values))}" if len(values) == 1 else f" (mean of {len(finite)} datasets)"
    return f"{metric} {fmt(np.mean(finite), 3)}{where}"


def _summary(rows: list[dict[str, Any]], props: list[str], models: list[str],
             run: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for prop in props:
        mine = [r for r in rows if r["property"] == prop]
        metric = headline_metric(prop, mine)
        cells = []
        for model in models:
            cell_rows = [r for r in mine if r["model"] == model]
            if not cell_rows:
                label = "failed to load" if model in failed_models(run) else "not measured"
                cells.append({"model": model, "verdict": "absent", "label": label, "counts": "", "key": ""})
                continue
            counts = Counter(verdict_of(r) for r in cell_rows if r.get("gate"))
            verdict = worst_verdict(counts.elements())
            cells.append({
                "model": model, "verdict": verdict, "label": VERDICT_LABEL[verdict],
                "counts": " · ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v]),
                "key": _headline_text(cell_rows, metric, run),
            })
        hib = higher_is_better(metric) if metric else None
        out.append({"property": prop, "title": PROPERTY_TITLES.get(prop, prop), "metric": metric,
                    "arrow": "↑" if hib else "↓" if hib is False else "", "cells": cells})
    return out


def _comparison_of(row: dict[str, Any]) -> dict[str, Any] | None:
    """The baseline comparison of a row: its regression gate, or an ungated comparison in ``extra``."""
    gate = row.get("gate") or {}
    if gate.get("kind") == "regression":
        return gate
    comparison = (row.get("extra") or {}).get("comparison")
    return {**comparison, "verdict": NO_GATE} if comparison else None


def _regression_view(rows: list[dict[str, Any]], renderer: FigureRenderer) -> dict[str, Any] | None:
    reg = sorted((r for r in rows if _comparison_of(r)), key=_regression_rank)
    if not reg:
        return None
    table = []
    for r in reg:
        g = _comparison_of(r)
        delta = g.get("delta")
        table.append({
            "model": r["model"], "baseline": g.get("baseline_model") or r["model"], "property": r["property"],
            "dataset": r["dataset"], "condition": r["condition"], "metric": r["metric"],
            "arrow": _row_view(r)["arrow"], "value": fmt(r.get("value")),
            "baseline_value": fmt(g.get("baseline_value")),
            "delta": "n/a" if delta is None else f"{float(delta):+.4g}", "ci": fmt_ci(g.get("ci")),
            "p_value": fmt(g.get("p_value"), 3), "max_drop": fmt(g.get("max_drop"), 3), "verdict": g["verdict"],
            "message": g.get("message") or "",
        })
    shown = reg[:MAX_FOREST_ROWS]
    figure = renderer.render(Plot("Change vs baseline", lambda fig: _forest(fig, shown), (7.0, 0.9 + 0.22 * len(shown)),
                                  "Change in the metric's good direction (+ = better) with its 95% CI; "
                                  "red tick: the allowed drop."))
    return {"rows": table, "figure": figure, "omitted": len(reg) - len(shown)}


def _regression_rank(row: dict[str, Any]) -> tuple[Any, ...]:
    g = _comparison_of(row)
    return VERDICT_RANK[g["verdict"]], row["model"], row["property"], row["dataset"], row["condition"], row["metric"]


def _forest(fig: Any, rows: list[dict[str, Any]]) -> None:
    ax = fig.add_subplot()
    colors = {"fail": "#c62828", "inconclusive": "#e0a800", "pass": "#2e7d32", NO_GATE: "#777777"}
    for i, r in enumerate(rows):
        g = _comparison_of(r)
        sign = -1.0 if higher_is_better(r["metric"], r) is False else 1.0  # plot "+ = better"
        delta = sign * _num(g.get("delta"))
        ci = sorted(sign * _num(c) for c in (g.get("ci") or (math.nan, math.nan)))
        if not any(map(math.isnan, ci)):
            ax.plot(ci, [i, i], color=colors[g["verdict"]], lw=1.6)
        ax.plot([delta], [i], "o", color=colors[g["verdict"]], ms=4)
        if g.get("max_drop") is not None:
            ax.plot([-float(g["max_drop"])], [i], "|", color="#c62828", ms=9, mew=1.5)
    ax.axvline(0, color="#444444", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{r['model']} · {r['metric']} · {_cell_label(r)}" for r in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("change vs baseline (+ = better)")


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "n/a"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    minutes, s = divmod(round(s), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours} h " if hours else "") + f"{minutes} min {s} s"


def reproduce_command(config: dict[str, Any]) -> str:
    """The pytest command line that repeats this run (documented options only)."""
    args = ["pytest"]
    for spec in config.get("models") or []:
        args += ["--model", str(spec)]
    for name, path in sorted((config.get("data") or {}).items()):
        args += ["--data", f"{name}={path}"]
    for option, key in (("--baseline", "baseline"), ("--report-dir", "report_dir"), ("--limit", "limit"),
                        ("--seed", "seed"), ("--device", "device")):
        if config.get(key) is not None:
            args += [option, str(config[key])]
    if config.get("strict"):
        args.append("--strict")
    return " ".join(shlex.quote(a) for a in args)


def _header(run: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    config = run.get("config") or {}
    cache = run.get("cache") or {}
    hits, misses = cache.get("hits"), cache.get("misses")
    total = (hits or 0) + (misses or 0)
    rate = f" ({100 * hits / total:.0f}% hits)" if hits is not None and misses is not None and total else ""
    versions = run.get("versions") or {}
    meta = [
        ("run id", run.get("run_id") or "n/a"),
        ("started", (run.get("started_at") or "n/a").replace("T", " ")),
        ("git commit", (run.get("git_commit") or "n/a")[:12]),
        ("seed", run.get("seed", config.get("seed", "n/a"))),
        ("device", run.get("device") or config.get("device") or "n/a"),
        ("torch", versions.get("torch") or "n/a"),
        ("open_clip", versions.get("open_clip_torch") or versions.get("open_clip") or "n/a"),
        ("wall time", _duration(run.get("wall_time_s"))),
        ("result cache", f"{fmt_count(hits)} hits / {fmt_count(misses)} misses{rate}"),
    ]
    summary = [
        ("models", ", ".join(map(str, config.get("models") or list(run.get("models") or {}))) or "n/a"),
        ("datasets", ", ".join(f"{k}={v}" for k, v in sorted((config.get("data") or {}).items())) or "embedded world"),
        ("limit", config.get("limit") if config.get("limit") is not None else "none"),
        ("templates", ", ".join(config.get("templates") or []) or "n/a"),
        ("thresholds", f"{len(config.get('thresholds') or [])} rules"),
        ("baseline", config.get("baseline") or "none"),
        ("strict", "yes (inconclusive fails)" if config.get("strict") else "no (inconclusive warns)"),
    ]
    counts = Counter(verdict_of(r) for r in rows if r.get("gate"))
    overall = worst_verdict(counts.elements())
    other_versions = [(k, v) for k, v in sorted(versions.items()) if k not in ("torch", "open_clip_torch", "open_clip")]
    return {"meta": meta, "config": summary, "versions": other_versions, "counts": {v: counts[v] for v in VERDICTS},
            "n_gates": sum(counts.values()), "overall": overall, "platform": run.get("platform") or "",
            "git_commit": run.get("git_commit") or "", "run_id": run.get("run_id") or ""}


PROBLEM_LABEL = {"load": "failed to load", "error": "error", "fail": "failed"}


def _problems(run: dict[str, Any]) -> list[dict[str, Any]]:
    """``run["problems"]``: what was not measured and why (failed loads, errored and failed tests)."""
    return [{"label": PROBLEM_LABEL.get(p.get("kind"), str(p.get("kind"))), "kind": p.get("kind"),
             "model": p.get("model") or "", "test": p.get("test") or "", "message": str(p.get("message") or ""),
             "tests": p.get("tests") or 1} for p in run.get("problems") or []]


def failed_models(run: dict[str, Any]) -> dict[str, str]:
    """Models of the run that failed to load -> the status sentence (shown in the summary table)."""
    return {m: info["status"] for m, info in (run.get("models") or {}).items()
            if isinstance(info, dict) and str(info.get("status", "")).startswith("failed to load")}


def _rule_audit(run: dict[str, Any]) -> dict[str, Any]:
    """``run["gates"]`` (clip_robustness.plugins.gates.audit) for the run panel; empty for reports written before it."""
    gates = run.get("gates") or {}
    rules = [{**r, "patterns": " · ".join(str(r.get(k, "*")) for k in ("property", "metric", "model", "dataset",
                                                                         "condition")),
              "bounds": ", ".join(f"{k} {r[k]:g}" for k in ("min", "max", "max_drop") if r.get(k) is not None)}
             for r in gates.get("rules") or []]
    return {"rules": rules, "baseline": gates.get("baseline"),
            "notes": list(gates.get("failures") or []) + list(gates.get("warnings") or [])}


def _sample_files(rows: list[dict[str, Any]], store: SampleStore) -> list[dict[str, Any]]:
    uses = Counter(r["samples"] for r in rows if r.get("samples"))
    out = []
    for rel in sorted(uses):
        status, size = store.status(rel)
        out.append({"path": rel, "rows": uses[rel], "ok": status == "ok",
                    "status": f"{size / 1024:.1f} KiB" if status == "ok" and size is not None else status})
    return out


def build_context(report: dict[str, Any], report_dir: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """Everything the template needs, as plain strings, numbers and pre-rendered SVG; figures are cached
    in ``cache_dir`` (the run's embedding cache folder) when given."""
    import matplotlib as mpl

    validate_report(report)
    run = report.get("run") or {}
    rows = list(report["results"])
    styles = ModelStyles(list(run.get("models") or {}) + sorted({r["model"] for r in rows}))
    failed = failed_models(run)
    models = styles.sort([r["model"] for r in rows] + list(failed))  # a model that failed to load keeps its column
    props = ordered_properties(r["property"] for r in rows)
    store = SampleStore(report_dir)
    renderer = FigureRenderer()
    if cache_dir is not None:
        from clip_robustness.fixtures.cache import EmbeddingCache

        renderer = FigureRenderer(EmbeddingCache(Path(cache_dir)), figure_inputs(rows, run, store))
    used: set[str] = set()
    sections = []
    with mpl.rc_context(_PLOT_STYLE):
        regression = _regression_view(rows, renderer)
        for prop in props:
            ctx = SectionContext(prop, [r for r in rows if r["property"] == prop], rows, run, store, styles)
            view = PROPERTY_VIEWS.get(prop)
            figures: list[RenderedFigure] = []
            candidates = view.plots(ctx) if view else []
            for i, plot in enumerate(candidates):
                if len(figures) == MAX_FIGURES:
                    ctx.note(f"{len(candidates) - i} more figures are not drawn to keep the report small "
                             f"(the most informative {MAX_FIGURES} are shown); the table lists every cell.")
                    break
                figure = renderer.render(plot, ctx)
                if figure is not None:
                    figures.append(figure)
            sections.append({
                "property": prop, "title": PROPERTY_TITLES.get(prop, prop), "anchor": _slug(prop, used),
                "n_rows": len(ctx.rows),
                "groups": _table_groups(ctx.rows, view.group_by if view else "dataset", styles),
                "figures": figures, "notes": ctx.notes,
                "verdict": worst_verdict(verdict_of(r) for r in ctx.rows),
            })
        factors = six_factor_view(rows, run, styles, renderer)
    flagged = sorted((r for r in rows if verdict_of(r) in ("fail", "inconclusive")),
                     key=lambda r: (VERDICT_RANK[verdict_of(r)], props.index(r["property"]), r["model"], r["dataset"],
                                    r["condition"], r["metric"]))
    anchors = {s["property"]: s["anchor"] for s in sections}
    config = run.get("config") or {}
    return {
        "header": _header(run, rows),
        "regression": regression,
        "models": models,
        "summary": _summary(rows, props, models, run),
        "problems": _problems(run),
        "failed_models": failed,
        "anchors": anchors,
        "flagged": [{"verdict": verdict_of(r), "message": _gate_message(r), "anchor": anchors[r["property"]],
                     "property": r["property"]} for r in flagged],
        "sections": sections,
        "factors": factors,
        "reproduce": {"command": reproduce_command(config),
                      "config": json.dumps(config, indent=2, sort_keys=True, default=str)},
        "samples": _sample_files(rows, store),
        "n_rows": len(rows),
        "rule_audit": _rule_audit(run),
    }


def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render_html(report: dict[str, Any], *, report_dir: Path, cache_dir: Path | None = None) -> str:
    """The HTML page for a parsed robustness.json; ``report_dir`` is where its ``samples/`` live."""
    context = build_context(report, Path(report_dir), cache_dir)
    return _environment().get_template("report.html.j2").render(**context)


def write_html(report: dict[str, Any], path: Path, *, report_dir: Path | None = None,
               cache_dir: Path | None = None) -> None:
    """Render and write atomically (temp file in the same folder, then ``os.replace``).
    ``report_dir`` defaults to the HTML file's folder, where robustness.json and samples/ live;
    ``cache_dir`` (the embedding cache folder) keeps figures between runs."""
    path = Path(path)
    report_dir = report_dir if report_dir is not None else path.parent
    atomic_write_text(path, render_html(report, report_dir=report_dir, cache_dir=cache_dir))
