"""The page: a parsed robustness.json -> the template's context (:func:`build_context`) -> HTML
(:func:`render_html`, :func:`write_html`).

Sections follow the property registry (:data:`clip_robustness.plugins.properties.PROPERTY_LIST`); each
property's figures come from the plot function its ``view`` names (``"module:function"``, imported on first
use), its table is grouped by its ``group_by``. Around them: the run header, the summary grid, the list of
failed and inconclusive gates, the regression and six-factor views, the command that reproduces the run.
"""
from __future__ import annotations

import importlib
import json
import math
import re
import shlex
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from clip_robustness.fixtures._io import atomic_write_text
from clip_robustness.fixtures.conditions import parse_condition
from clip_robustness.plugins.gates import describe_cell
from clip_robustness.plugins.html.figures import (FACTORS_VIEW, MAX_FIGURES, PLOT_STYLE, REGRESSION_VIEW,
                                                  FigureRenderer, ModelStyles, PlotFunction, RenderedFigure,
                                                  SampleStore, SectionContext, figure_inputs)
from clip_robustness.plugins.html.regression import regression_view
from clip_robustness.plugins.html.rows import (VERDICT_LABEL, VERDICT_RANK, VERDICTS, arrow, fmt, fmt_ci, fmt_count,
                                               headline_metric, higher_is_better, natural_key, ordered_properties,
                                               property_title, validate_report, verdict_of, worst_verdict)
from clip_robustness.plugins.html.six_factor import series_value, six_factor_view
from clip_robustness.plugins.properties import PROPERTIES

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"
PROBLEM_LABEL = {"load": "failed to load", "error": "error", "fail": "failed"}


def plot_function(prop: str) -> PlotFunction | None:
    """The plot function the registry names for a property (its ``view``, ``"module:function"``), imported
    now; None for a table-only property or one the registry does not know."""
    entry = PROPERTIES.get(prop)
    if entry is None or not entry.view:
        return None
    module, _, name = entry.view.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"property {prop!r}: its view {entry.view!r} in clip_robustness.plugins.properties cannot "
                         f"be imported ({err}); name a plot function as 'package.module:function'") from None
    if not callable(fn):
        raise ValueError(f"property {prop!r}: its view {entry.view!r} is not a function; name a plot function "
                         "as 'package.module:function'")
    return fn


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
        "arrow": arrow(hib),
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
    """A property's table: every row, grouped by ``group_by`` (a condition key, or "dataset")."""
    def group_of(row: dict[str, Any]) -> str:
        if group_by == "dataset":
            return f"dataset {row['dataset']}"
        value = parse_condition(row["condition"]).get(group_by)
        return f"{group_by} = {value}" if value is not None else "other conditions"

    model_rank = {m: i for i, m in enumerate(styles.sort(r["model"] for r in rows))}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (natural_key(r["dataset"]), natural_key(r["condition"]),
                                         natural_key(r["metric"]), model_rank[r["model"]])):
        groups[group_of(r)].append(r)
    return [{"title": title, "rows": [_row_view(r) for r in grouped]}
            for title, grouped in sorted(groups.items(), key=lambda kv: natural_key(kv[0]))]


def _headline_text(rows: list[dict[str, Any]], metric: str | None, run: dict[str, Any]) -> str:
    """A model's headline number for a property: per dataset its primary cell (as in the six-factor
    view), then the mean over datasets."""
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["metric"] == metric:
            by_dataset[r["dataset"]].append(r)
    values = {d: series_value(rs, run, None) for d, rs in sorted(by_dataset.items())}
    finite = [v for v in values.values() if not math.isnan(v)]
    if not finite:
        return f"{metric} n/a"
    where = f" · {next(iter(values))}" if len(values) == 1 else f" (mean of {len(finite)} datasets)"
    return f"{metric} {fmt(np.mean(finite), 3)}{where}"


def _summary(rows: list[dict[str, Any]], props: list[str], models: list[str],
             run: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary grid, a row per property and a cell per model with its worst gate verdict, the gate
    counts and its headline number: the reader sees at a glance which model fails which property, and
    which model was not measured (or failed to load)."""
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
        out.append({"property": prop, "title": property_title(prop), "metric": metric,
                    "arrow": arrow(higher_is_better(metric) if metric else None), "cells": cells})
    return out


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
    """The pytest command line that repeats a run, from its ``run["config"]``
    (:meth:`clip_robustness.plugins.config.RunConfig.to_json`): every option that changed the result, each
    one shell word ``--option=VALUE``. The ``=`` form matters: pytest looks for test paths among the
    arguments before it knows the plugin's options, so in ``--report-dir /tmp/x`` it would take ``/tmp/x``
    for a path. Options absent from the config (a report written before them) are left out."""
    args = ["pytest", *(f"--model={spec}" for spec in config.get("models") or [])]
    options = config.get("data_options") or {}
    for name, path in sorted((config.get("data") or {}).items()):  # imagefolder files: PATH;classnames=FILE
        files = sorted((options.get(name) or {}).items())
        args.append(f"--data={name}={path}" + "".join(f";{k}={v}" for k, v in files))
    args += [f"--templates={t}" for t in config.get("templates") or []]
    args += [f"--lmm={spec}" for spec in config.get("lmms") or []]
    baseline_models = sorted((config.get("baseline_models") or {}).items())
    args += [f"--baseline-model={model}={base}" for model, base in baseline_models]
    for option, key in (("--thresholds", "thresholds_file"), ("--baseline", "baseline"), ("--report-dir", "report_dir"),
                        ("--limit", "limit"), ("--seed", "seed"), ("--device", "device"), ("--precision", "precision"),
                        ("--batch-size", "batch_size"), ("--threads", "threads")):
        if config.get(key) is not None:
            args.append(f"{option}={config[key]}")
    if "cache_dir" in config:
        args.append(f"--embedding-cache={config['cache_dir'] or 'off'}")
    if config.get("shard"):
        args.append("--shard={}/{}".format(*config["shard"]))
    if config.get("strict"):
        args.append("--strict")
    return shlex.join(args)


def _header(run: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The run panel: when, where and with what the run was made, its settings, and the gate counts."""
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
        ("result cache", f"{fmt_count(hits)} hits / {fmt_count(misses)} misses{rate}"
                         + (f"; {fmt_count(cache['replayed'])} tests replayed" if cache.get("replayed") else "")),
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


def _section(ctx: SectionContext, renderer: FigureRenderer, anchor: str) -> dict[str, Any]:
    """One property's section: its view's figures (at most ``MAX_FIGURES``, the most informative first),
    the notes they made, and its table of every cell."""
    figures: list[RenderedFigure] = []
    try:
        view = plot_function(ctx.prop)
        candidates = view(ctx) if view else []
    except Exception as err:  # a project's view (or ours) that breaks costs its figures, never the report
        ctx.note(f"the figures of {ctx.prop} could not be drawn ({type(err).__name__}: {err}); the table lists "
                 "every cell.")
        candidates = []
    for i, plot in enumerate(candidates):
        if len(figures) == MAX_FIGURES:
            ctx.note(f"{len(candidates) - i} more figures are not drawn to keep the report small "
                     f"(the most informative {MAX_FIGURES} are shown); the table lists every cell.")
            break
        figure = renderer.render(plot, ctx)
        if figure is not None:
            figures.append(figure)
    group_by = PROPERTIES[ctx.prop].group_by if ctx.prop in PROPERTIES else "dataset"
    return {"property": ctx.prop, "title": property_title(ctx.prop), "anchor": anchor, "n_rows": len(ctx.rows),
            "groups": _table_groups(ctx.rows, group_by, ctx.styles), "figures": figures, "notes": ctx.notes,
            "verdict": worst_verdict(verdict_of(r) for r in ctx.rows)}


@dataclass
class PageFigures:
    """What every figure of a report is drawn from; the same in this process and in a drawing helper."""

    rows: list[dict[str, Any]]
    run: dict[str, Any]
    store: SampleStore
    styles: ModelStyles
    renderer: FigureRenderer
    views: list[str]  # in page order: REGRESSION_VIEW, the properties, FACTORS_VIEW

    @classmethod
    def of(cls, report: dict[str, Any], report_dir: Path, cache_dir: Path | None) -> "PageFigures":
        run = report.get("run") or {}
        rows = list(report["results"])
        styles = ModelStyles(list(run.get("models") or {}) + sorted({r["model"] for r in rows}))
        store = SampleStore(report_dir)
        renderer = FigureRenderer()
        if cache_dir is not None:
            from clip_robustness.fixtures.cache import EmbeddingCache

            renderer = FigureRenderer(EmbeddingCache(Path(cache_dir)), figure_inputs(rows, run, store))
        props = ordered_properties(r["property"] for r in rows)
        return cls(rows, run, store, styles, renderer, [REGRESSION_VIEW, *props, FACTORS_VIEW])

    def draw(self, view: str, anchor: str = "") -> Any:
        """One view of the page: the regression view, a property's section or the six-factor view."""
        if view == REGRESSION_VIEW:
            return regression_view(self.rows, self.renderer)
        if view == FACTORS_VIEW:
            return six_factor_view(self.rows, self.run, self.styles, self.renderer)
        ctx = SectionContext(view, [r for r in self.rows if r["property"] == view], self.rows, self.run, self.store,
                             self.styles)
        return _section(ctx, self.renderer, anchor)


def build_context(report: dict[str, Any], report_dir: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """Everything the template needs, as plain strings, numbers and pre-rendered SVG; figures are cached
    in ``cache_dir`` (the run's embedding cache folder) when given. With a cache, the first figure this
    process has to draw (beyond the first few) starts a helper process that draws the page from its last view
    backwards (:mod:`clip_robustness.plugins.html.helper`), so a cold report's figures take about half the time."""
    import matplotlib as mpl

    from clip_robustness.plugins.html.helper import DrawingHelper

    validate_report(report)
    figures = PageFigures.of(report, Path(report_dir), cache_dir)
    run, rows, styles, store = figures.run, figures.rows, figures.styles, figures.store
    failed = failed_models(run)
    models = styles.sort([r["model"] for r in rows] + list(failed))  # a model that failed to load keeps its column
    props = figures.views[1:-1]
    helper = None
    if cache_dir is not None:
        helper = DrawingHelper(report, Path(report_dir), Path(cache_dir), figures.views[::-1])
        figures.renderer.before_drawing = helper.before_drawing
    used: set[str] = set()
    try:
        with mpl.rc_context(PLOT_STYLE):
            regression = figures.draw(REGRESSION_VIEW)
            sections = [figures.draw(prop, _slug(prop, used)) for prop in props]
            factors = figures.draw(FACTORS_VIEW)
    finally:
        if helper is not None:
            helper.stop()
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
