"""The HTML report: every cell in its table, verdicts, escaping, self-containment, missing samples,
determinism, and the re-render CLI. Checked with a real HTML parser (html.parser) on a synthetic
report whose per-sample files hold real arrays."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from clip_robustness.fixtures.conditions import condition
from clip_robustness.plugins.html import (MAX_FIGURES, higher_is_better, plot_function, render_html, validate_report,
                                         write_html)
from clip_robustness.plugins.html.lmm import LMM_CLASSES_PER_PANEL, lmm_help_hurt
from clip_robustness.plugins.properties import PROPERTIES, PROPERTY_LIST
from clip_robustness.plugins.render import main as render_cli

REPO = Path(__file__).resolve().parents[1]
XSS = "<script>alert(1)</script>"
M1, M2, M3 = "embedded:vit-clip", "embedded:rn-siglip", XSS
MODELS = {
    M1: {"architecture": "vit", "train_distribution": "diverse", "train_size": "large", "finetune": "none", "loss": "clip"},
    M2: {"architecture": "resnet", "train_distribution": "narrow", "train_size": "small", "finetune": "none", "loss": "siglip"},
    M3: {"architecture": "vit", "train_distribution": "diverse", "train_size": "small", "finetune": "labels", "loss": "clip"},
}
# Worst gate verdict per (property, model) that the rows below are built to produce.
EXPECTED_SUMMARY = {
    ("accuracy", M1): "pass", ("accuracy", M2): "fail", ("accuracy", M3): "inconclusive",
    ("calibration", M1): "fail", ("calibration", M2): "pass", ("calibration", M3): "none",
    ("ood", M1): "fail", ("ood", M2): "inconclusive", ("ood", M3): "pass",
    ("corruption2d", M1): "none", ("corruption2d", M2): "none", ("corruption2d", M3): "none",
    ("corruption3d", M1): "none", ("corruption3d", M2): "absent", ("corruption3d", M3): "absent",
    ("shape_bias", M1): "pass", ("shape_bias", M2): "fail", ("shape_bias", M3): "none",
}
# Gate verdicts of the accuracy rows (templates=openai) on world:test and world:shift-bg.
ACCURACY_GATES = {M1: ["pass", "pass"], M2: ["pass", "fail"], M3: ["inconclusive", "pass"]}


def gate(verdict: str, row_text: str = "") -> dict[str, Any]:
    return {"kind": "bound", "min": 0.5, "verdict": verdict,
            "message": f"synthetic {verdict} gate {row_text}".strip() + "."}


def row(prop: str, model: str, dataset: str, condition: str, metric: str, value: float | None, *,
        hib: bool | None = True, verdict: str | None = None, samples: str | None = None,
        n: int = 300) -> dict[str, Any]:
    ci = None if value is None else [round(value - 0.03, 6), round(value + 0.03, 6)]
    return {"property": prop, "model": model, "dataset": dataset, "condition": condition, "metric": metric,
            "value": value, "ci": ci, "n": n, "higher_is_better": hib,
            "gate": gate(verdict, f"{metric} {model} {dataset} {condition}") if verdict else None,
            "test": f"robustness_tests/test_{prop}.py::test[{model}]", "samples": samples, "extra": {}}


def save(report_dir: Path, name: str, **arrays: np.ndarray) -> str:
    rel = f"samples/{name}.npz"
    (report_dir / "samples").mkdir(exist_ok=True)
    np.savez_compressed(report_dir / rel, **arrays)
    return rel


def build_report(report_dir: Path, models: dict[str, dict[str, str]] = MODELS) -> dict[str, Any]:
    """A run over several properties with real per-sample arrays; one samples path is missing and
    one file is corrupt."""
    rng = np.random.default_rng(0)
    names = list(models)
    rows: list[dict[str, Any]] = []
    base = {m: 0.85 - 0.12 * i for i, m in enumerate(names)}  # ID accuracy per model
    for i, m in enumerate(names):
        verdicts = ACCURACY_GATES[m]
        for j, ds in enumerate(("world:test", "world:shift-bg")):
            for templates in ("openai", "single"):
                value = round(base[m] - 0.1 * j - (0.02 if templates == "single" else 0.0) + rng.uniform(0, .01), 6)
                rows.append(row("accuracy", m, ds, f"templates={templates}", "top1", value,
                                verdict=verdicts[j] if templates == "openai" else None))
        # calibration: logits before/after temperature scaling, real arrays
        labels = rng.integers(0, 5, 300)
        logits = rng.normal(0, 1, (300, 5)).astype(np.float32)
        logits[np.arange(300), labels] += 1.5 + i
        for scaling, z in (("none", logits * 3), ("temperature", logits)):
            rel = save(report_dir, f"cal-{i}-{scaling}", logits=z, labels=labels)
            if m == M2 and scaling == "temperature":
                rel = "samples/missing.npz"  # recorded but never written
            if m == M3 and scaling == "none":
                rel = "samples/corrupt.npz"
            verdict = {M1: "fail", M2: "pass"}.get(m) if scaling == "none" else None
            rows.append(row("calibration", m, "world:test", f"scaling={scaling};templates=openai", "ece",
                            round(0.02 + 0.03 * i + (0.05 if scaling == "none" else 0), 6), hib=False,
                            verdict=verdict, samples=rel))
        # ood: scores and their AUROC
        s_in, s_out = rng.normal(1.5 - 0.4 * i, 1, 400), rng.normal(0, 1, 300)
        rel = save(report_dir, f"ood-{i}", scores_in=s_in.astype(np.float32), scores_out=s_out.astype(np.float32))
        auroc = float(roc_auc_score(np.r_[np.ones(400), np.zeros(300)], np.r_[s_in, s_out]))
        for score in ("mcm", "msp"):
            rows.append(row("ood", m, "world:test", f"ood_set=world:heldout;score={score}", "auroc", round(auroc, 6),
                            verdict={M1: "pass", M2: "inconclusive", M3: "pass"}.get(m) if score == "mcm" else None,
                            samples=rel))
            rows.append(row("ood", m, "world:test", f"ood_set=world:heldout;score={score}", "fpr95",
                            round(0.3 + 0.1 * i, 6), hib=False))
        for family in ("fog", "gaussian_noise"):
            for severity in (1, 2, 3, 5):
                rows.append(row("corruption2d", m, "world:test", f"corruption={family};severity={severity}", "top1",
                                round(base[m] - 0.05 * severity * (1.5 if family == "fog" else 1) - 0.01 * i, 6)))
        for factor, values in (("pose", ("front", "side", "top")), ("background", ("plain", "clutter"))):
            for k, v in enumerate(values):
                rows.append(row("factor", m, "world:test", f"factor={factor};value={v}", "top1",
                                round(base[m] - 0.07 * k + rng.uniform(0, .01), 6)))
            rows.append(row("factor", m, "world:test", f"factor={factor}", "effective_robustness",
                            round(0.02 - 0.02 * i + rng.uniform(-0.01, 0.01), 6)))
        for k, cls in enumerate(("cube", "sphere", "torus")):
            rows.append(row("shape_bias", m, "world:cue-conflict", f"class={cls}", "shape_bias",
                            round(0.3 + 0.15 * k + 0.1 * i, 6)))
        if m != M3:
            rows.append(row("shape_bias", m, "world:cue-conflict", "", "shape_bias", round(0.45 + 0.1 * i, 6),
                            verdict={M1: "pass", M2: "fail"}[m]))
        for cond in ("", "captions=paraphrase"):
            for d in ("i2t", "t2i"):
                for k in (1, 5, 10):
                    rows.append(row("retrieval", m, "world:captions", cond, f"{d}_r{k}",
                                    round(min(0.2 + 0.07 * k - 0.05 * i - (0.05 if cond else 0), 1), 6)))
        rows.append(row("multiview", m, "world:multiview", "threshold=2", "correspondence_recall", round(0.6 - 0.1 * i, 6)))
        rows.append(row("lmm", m, "world:hard", "", "top1", None, verdict=None))
    rows.append(row("corruption3d", M1, "world:test", "corruption=near_focus;severity=1", "top1", 0.7))
    rows.append(row("corruption3d", M1, "world:test", "corruption=near_focus;severity=3", "top1", 0.55))
    rows.append(row("zz_custom", M1, "world:<b>bold</b>", 'note="quoted"&<i>', "my_metric", 1.25, hib=None))
    regression = row("ood", M1, "world:test", "ood_set=world:heldout;score=mcm", "auroc", 0.81)
    regression["gate"] = {"kind": "regression", "baseline_model": M1 + "@baseline", "baseline_value": 0.9,
                          "delta": -0.09, "ci": [-0.12, -0.06], "p_value": 0.0012, "max_drop": 0.02,
                          "verdict": "fail", "message": f"auroc dropped by 0.09 vs baseline for {M1}: regression.",
                          "method": "unpaired (the baseline was run with --seed 1, this run with 0, so its items differ)"}
    rows.append(regression)
    (report_dir / "samples").mkdir(exist_ok=True)
    (report_dir / "samples" / "corrupt.npz").write_bytes(b"this is not a zip file")
    run = {
        "config": {"models": names, "data": {}, "thresholds": [], "baseline": None, "report_dir": "reports",
                   "limit": 300, "seed": 1234, "device": "cpu", "strict": False, "templates": ["openai", "single"],
                   "cache_dir": None},
        "seed": 1234, "versions": {"python": "3.11.9", "torch": "2.14.1", "open_clip_torch": "3.3.0", "numpy": "2.4.6"},
        "device": "cpu", "platform": "Linux-x86_64", "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "started_at": "2025-01-01T00:00:00+00:00", "wall_time_s": 754.2, "cache": {"hits": 90, "misses": 10},
        "models": {m: {"arch": "world-vit-tiny", "sha256": "ab" * 32, "metadata": meta} for m, meta in models.items()},
    }
    return {"run": run, "results": rows}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent, self.children, self.text = tag, attrs, parent, [], []

    def iter(self, tag: str | None = None) -> list[Node]:
        out = [self] if tag in (None, self.tag) else []
        for child in self.children:
            out += child.iter(tag)
        return out

    def all_text(self) -> str:
        return "".join(self.text) + "".join(c.all_text() for c in self.children)

    def find(self, tag: str, **attrs: str) -> list[Node]:
        return [n for n in self.iter(tag) if all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]


class TreeBuilder(HTMLParser):
    """A minimal DOM from the standard-library HTML parser (enough for these assertions)."""

    VOID = {"meta", "br", "img", "link", "input", "hr", "col", "area", "base", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.current = self.root
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs), self.current)
        self.tags.append((tag, node.attrs))
        self.current.children.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self.current.children.append(Node(tag, dict(attrs), self.current))

    def handle_endtag(self, tag: str) -> None:
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent  # tolerate unclosed children
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.text.append(data)


def parse(html: str) -> TreeBuilder:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str, TreeBuilder]:
    report_dir = tmp_path_factory.mktemp("reports")
    report = build_report(report_dir)
    (report_dir / "robustness.json").write_text(json.dumps(report))
    write_html(report, report_dir / "robustness.html")
    html = (report_dir / "robustness.html").read_text(encoding="utf-8")
    return report, report_dir, html, parse(html)


def section(tree: TreeBuilder, prop: str) -> Node:
    found = tree.root.find("section", data_property=prop)
    assert len(found) == 1, f"expected one section for {prop!r}, found {len(found)}"
    return found[0]


def test_every_row_value_is_in_its_property_table(rendered):
    report, _, _, tree = rendered
    for r in report["results"]:
        table_rows = section(tree, r["property"]).find("tr", data_model=r["model"], data_metric=r["metric"])
        values = {td.attrs.get("data-value") for tr in table_rows for td in tr.find("td") if "data-value" in td.attrs}
        expected = "" if r["value"] is None else repr(float(r["value"]))
        assert expected in values, f"{r['property']}/{r['model']}/{r['condition']}/{r['metric']}={r['value']} missing"
    assert sum(len([t for t in s.iter("tr") if "data-metric" in t.attrs]) for s in tree.root.find("section")
               if "data-property" in s.attrs) == len(report["results"])


def test_summary_cells_show_the_worst_verdict(rendered):
    _, _, _, tree = rendered
    for (prop, model), verdict in EXPECTED_SUMMARY.items():
        tr = tree.root.find("tr", data_property=prop)
        assert len(tr) == 1
        cells = tr[0].find("td", data_model=model)
        assert [c.attrs["data-verdict"] for c in cells] == [verdict], (prop, model)


def test_summary_headline_uses_the_primary_cell(rendered):
    report, _, _, tree = rendered

    def key(prop: str, model: str) -> str:
        cell = tree.root.find("tr", data_property=prop)[0].find("td", data_model=model)[0]
        return cell.find("span", **{"class": "key"})[0].all_text()

    def value(prop: str, model: str, condition: str) -> float:
        return next(r["value"] for r in report["results"] if r["property"] == prop and r["model"] == model
                    and r["condition"] == condition and not (r["gate"] or {}).get("kind") == "regression")

    # unscaled logits (not the mean with the temperature-scaled cell); the overall shape bias row, not its
    # mean with the per-class rows; per-class mean where no overall row exists; the run's first template set
    assert key("calibration", M1) == f"ece {value('calibration', M1, 'scaling=none;templates=openai'):.3g} · world:test"
    assert key("shape_bias", M1) == f"shape_bias {value('shape_bias', M1, ''):.3g} · world:cue-conflict"
    per_class = [value("shape_bias", M3, f"class={c}") for c in ("cube", "sphere", "torus")]
    assert key("shape_bias", M3) == f"shape_bias {np.mean(per_class):.3g} · world:cue-conflict"
    shift = next(r["value"] for r in report["results"] if r["model"] == M2 and r["dataset"] == "world:shift-bg"
                 and r["condition"] == "templates=openai")
    test = next(r["value"] for r in report["results"] if r["model"] == M2 and r["dataset"] == "world:test"
                and r["condition"] == "templates=openai")
    assert key("accuracy", M2) == f"top1 {np.mean([shift, test]):.3g} (mean of 2 datasets)"


def test_header_counts_gates_and_shows_run_metadata(rendered):
    report, _, _, tree = rendered
    verdicts = [r["gate"]["verdict"] for r in report["results"] if r["gate"]]
    banner = tree.root.find("div", id="verdict")[0].all_text()
    for verdict, word in (("pass", "passed"), ("fail", "failed"), ("inconclusive", "inconclusive")):
        assert f"{verdicts.count(verdict)} {word}" in banner
    header = tree.root.find("header", id="run")[0].all_text()
    for text in ("0123456789ab", "1234", "2.14.1", "3.3.0", "12 min 34 s", "90 hits / 10 misses (90% hits)"):
        assert text in header


def test_failure_and_inconclusive_messages_are_listed(rendered):
    report, _, _, tree = rendered
    items = tree.root.find("section", id="gates")[0].iter("li")
    listed = {li.attrs["data-verdict"]: [] for li in items}
    for li in items:
        listed[li.attrs["data-verdict"]].append(li.find("span", **{"class": "message"})[0].all_text())
    for r in report["results"]:
        if r["gate"] and r["gate"]["verdict"] != "pass":
            assert r["gate"]["message"] in listed[r["gate"]["verdict"]]
    assert len(items) == sum(1 for r in report["results"] if r["gate"] and r["gate"]["verdict"] != "pass")
    assert "synthetic pass gate" not in " ".join(" ".join(v) for v in listed.values())


def test_regression_view(rendered):
    _, _, _, tree = rendered
    reg = tree.root.find("section", id="regression")[0]
    rows = reg.find("tr", data_verdict="fail")
    assert len(rows) == 1
    text = [td.all_text() for td in rows[0].iter("td")]
    assert M1 + "@baseline" in text and "-0.09" in text and "[-0.12, -0.06]" in text and "0.0012" in text
    assert reg.iter("svg")
    # reliability 42: the section said "on the same samples (paired test)" of unpaired comparisons too
    assert "unpaired (the baseline was run with --seed 1, this run with 0, so its items differ)" in text
    lead = reg.find("p", **{"class": "lead"})[0].all_text()
    assert "0 of the 1 comparisons are on the same samples" in lead and "1 are unpaired" in lead


def test_the_regression_lead_says_which_comparisons_are_paired():
    """Reliability 42: each comparison's method is in the table, and the lead counts the unpaired ones."""
    from clip_robustness.plugins.html.regression import regression_view

    class NoFigures:
        def render(self, *args: Any, **kwargs: Any) -> None:
            return None

    def cell(metric: str, method: str) -> dict[str, Any]:
        return {"model": M1, "property": "accuracy", "dataset": "world:test", "condition": "", "metric": metric,
                "value": 0.9, "higher_is_better": True, "gate": None,
                "extra": {"comparison": {"baseline_model": M1, "baseline_value": 0.9, "delta": 0.0, "ci": [0.0, 0.0],
                                         "p_value": 1.0, "method": method}}}

    paired = cell("top1", "McNemar exact (p) + paired bootstrap (CI)")
    view = regression_view([paired], NoFigures())
    assert view["lead"] == "Each candidate against its baseline on the same samples (paired test)."
    unpaired = cell("ece", "unpaired (the baseline's per-sample file samples/x.npz does not match its row: …)")
    view = regression_view([paired, unpaired], NoFigures())
    assert view["unpaired"] == 1 and view["lead"].startswith(
        "Each candidate against its baseline: 1 of the 2 comparisons are on the same samples (paired test); 1 are "
        "unpaired or not compared")
    assert sorted(r["method"] for r in view["rows"]) == sorted(c["extra"]["comparison"]["method"]
                                                              for c in (paired, unpaired))


def test_names_from_data_are_escaped(rendered):
    _, _, html, tree = rendered
    assert "<script" not in html.lower()
    assert not tree.root.iter("script")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert XSS in [th.all_text() for th in tree.root.find("table", **{"class": "summary"})[0].iter("th")]
    assert "<b>bold" not in html and "<i>" not in html and "world:&lt;b&gt;bold&lt;/b&gt;" in html


def test_self_contained_no_external_references(rendered):
    _, _, html, tree = rendered
    assert_self_contained(html, tree)


def assert_self_contained(html: str, tree: TreeBuilder) -> None:
    for tag, attrs in tree.tags:
        for key in ("src", "href", "xlink:href", "action", "poster", "data"):
            value = (attrs.get(key) or "").strip().lower()
            assert not re.match(r"(https?:)?//", value), f"<{tag} {key}={value[:60]}> loads an external resource"
        assert tag != "link", "no external stylesheets"
    assert "@import" not in html
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html)


def test_figures_are_embedded_and_capped(rendered):
    _, _, _, tree = rendered
    for prop in ("accuracy", "calibration", "ood", "corruption2d", "corruption3d", "factor", "shape_bias", "retrieval"):
        figures = section(tree, prop).iter("svg")
        assert 1 <= len(figures) <= MAX_FIGURES, prop
    assert not section(tree, "multiview").iter("svg")  # no plot registered: a table only
    assert tree.root.find("section", id="six-factors")[0].iter("svg")
    for img in tree.root.iter("img"):
        assert (img.attrs.get("src") or "").startswith("data:image/")


def test_missing_and_corrupt_sample_files_are_noted(rendered):
    _, _, _, tree = rendered
    notes = [p.all_text() for p in section(tree, "calibration").find("p", **{"class": "note"})]
    assert any("samples/missing.npz is missing" in n and M2 in n for n in notes), notes
    assert any("samples/corrupt.npz is unreadable" in n for n in notes), notes
    footer = {tr.iter("td")[0].all_text(): tr.iter("td")[2].all_text()
              for tr in tree.root.find("footer")[0].iter("tr")[1:]}
    assert footer["samples/missing.npz"] == "is missing"
    assert footer["samples/corrupt.npz"].startswith("is unreadable")
    assert footer["samples/ood-0.npz"].endswith("KiB")


def test_unusable_sample_arrays_are_noted_not_raised(tmp_path):
    labels = np.arange(10) % 3
    bad_logits = save(tmp_path, "bad-logits", logits=np.full((10, 3), np.nan, np.float32), labels=labels)
    short = save(tmp_path, "short", logits=np.zeros((10, 3), np.float32), labels=labels[:4])
    nan_scores = save(tmp_path, "nan-scores", scores_in=np.array([np.nan, 1.0]), scores_out=np.array([0.0]))
    wrong_keys = save(tmp_path, "wrong-keys", something=np.zeros(3))
    report = {"run": {}, "results": [
        row("calibration", M1, "world:test", "scaling=none", "ece", 0.1, hib=False, samples=bad_logits),
        row("calibration", M2, "world:test", "scaling=none", "ece", 0.1, hib=False, samples=short),
        row("calibration", M3, "world:test", "scaling=none", "ece", 0.1, hib=False, samples=wrong_keys),
        row("ood", M1, "world:test", "score=mcm", "auroc", 0.9, samples=nan_scores),
    ]}
    tree = parse(render_html(report, report_dir=tmp_path))
    notes = " ".join(p.all_text() for p in tree.root.find("p", **{"class": "note"}))
    for rel in (bad_logits, short, nan_scores):
        assert f"Per-sample file {rel} holds unusable arrays" in notes, notes
    assert f"Per-sample file {wrong_keys} lacks logits, labels" in notes
    assert not section(tree, "ood").iter("svg")  # nothing drawable: no empty figure either


def test_temperature_on_its_bound_gets_an_escaped_note(tmp_path):
    at_bound = row("calibration", XSS, "world:test", "", "temperature", 100.0, hib=None)
    at_bound["extra"] = {"temperature_at_bound": True, "temperature_bounds": [0.01, 100.0]}
    fitted = row("calibration", M1, "world:test", "", "temperature", 1.7, hib=None)
    fitted["extra"] = {"temperature_at_bound": False, "temperature_bounds": [0.01, 100.0]}
    html = render_html({"run": {}, "results": [at_bound, fitted]}, report_dir=tmp_path)
    notes = [p.all_text() for p in section(parse(html), "calibration").find("p", **{"class": "note"})]
    assert notes == [f"The temperature fitted for {XSS} on world:test lies on its search bound (T=100, bounds "
                     "[0.01, 100.0]): the NLL optimum is outside the range (a near-chance or perfectly separable "
                     "model), so its scaling=temperature numbers use the bound."]
    assert XSS not in html


def test_property_sections_follow_the_documented_order(rendered):
    _, _, _, tree = rendered
    order = [s.attrs["data-property"] for s in tree.root.find("section") if "data-property" in s.attrs]
    assert order == ["accuracy", "factor", "shape_bias", "calibration", "ood", "retrieval", "corruption2d",
                     "corruption3d", "multiview", "lmm", "zz_custom"]
    ood_groups = [th.all_text() for th in section(tree, "ood").iter("th") if th.attrs.get("colspan") == "8"]
    assert ood_groups == ["score = mcm", "score = msp"]


def test_sections_take_order_and_titles_from_the_property_registry(rendered):
    _, _, _, tree = rendered
    titles = {s.attrs["data-property"]: s.iter("h2")[0].text[0].strip() for s in tree.root.find("section")
              if "data-property" in s.attrs}
    shown = [p for p in PROPERTY_LIST if p.name in titles]
    assert [p.name for p in shown] == [p for p in titles if p in PROPERTIES]  # registry order, unknown ones after
    assert {p.name: titles[p.name] for p in shown} == {p.name: p.title for p in shown}
    assert titles["zz_custom"] == "zz_custom"  # a property the registry does not know: its own name, table only


def test_a_registered_property_follows_the_built_in_ones(tmp_path, monkeypatch):
    from clip_robustness.plugins.properties import Property

    monkeypatch.setitem(PROPERTIES, "aa_team", Property("aa_team", "Our own property", "a team's property", ("score",)))
    rows = [row(p, M1, "world:test", "", "score", 0.5) for p in ("zz_custom", "aa_team", "accuracy")]
    tree = parse(render_html({"run": {}, "results": rows}, report_dir=tmp_path))
    sections = [s for s in tree.root.find("section") if "data-property" in s.attrs]
    assert [s.attrs["data-property"] for s in sections] == ["accuracy", "aa_team", "zz_custom"]
    assert sections[1].iter("h2")[0].text[0].strip() == "Our own property"


def test_every_registered_view_resolves_to_a_plot_function(tmp_path):
    from clip_robustness.plugins.html.figures import ModelStyles, SampleStore, SectionContext

    for prop in PROPERTIES.values():
        view = plot_function(prop.name)
        assert (view is None) == (prop.view == ""), prop.name
        if view is not None:  # a plot function: a section's context in, a list of figure candidates out
            ctx = SectionContext(prop.name, [], [], {}, SampleStore(tmp_path), ModelStyles([]))
            assert callable(view) and view(ctx) == [], prop.name
    assert plot_function("zz_custom") is None


def test_a_broken_view_path_is_named(monkeypatch):
    import dataclasses

    broken = dataclasses.replace(PROPERTIES["accuracy"], view="clip_robustness.plugins.html.nowhere:plots")
    monkeypatch.setitem(PROPERTIES, "accuracy", broken)
    with pytest.raises(ValueError, match=r"^property 'accuracy': its view '.*nowhere:plots' .* cannot be imported"):
        plot_function("accuracy")


def test_metric_direction_comes_from_the_registry(rendered):
    report, _, _, tree = rendered
    assert higher_is_better("ece", {"higher_is_better": True}) is False  # the registry wins over the row
    assert higher_is_better("my_metric", {"higher_is_better": False}) is False
    assert higher_is_better("my_metric", {"higher_is_better": None}) is None
    arrows = {tr.attrs["data-metric"]: tr.iter("span")[0].attrs["title"] for s in tree.root.find("section")
              for tr in s.iter("tr") if "data-metric" in tr.attrs}
    assert arrows["ece"] == "lower is better" and arrows["auroc"] == "higher is better"
    assert arrows["my_metric"] == "direction unknown"


def test_six_factor_table_means_per_level(rendered):
    report, _, _, tree = rendered
    id_top1 = {r["model"]: r["value"] for r in report["results"] if r["property"] == "accuracy"
               and r["dataset"] == "world:test" and r["condition"] == "templates=openai"}
    table = tree.root.find("table", **{"class": "factors"})[0]
    cells = {(tr.iter("td")[0].all_text(), tr.iter("td")[1].all_text()): tr.iter("td")[3].all_text()
             for tr in table.iter("tr")[1:]}
    assert cells[("architecture", "vit")] == f"{np.mean([id_top1[M1], id_top1[M3]]):.3g}"
    assert cells[("loss", "siglip")] == f"{id_top1[M2]:.3g}"


def test_six_factor_view_skips_with_one_model(tmp_path):
    report = {"run": {"models": {M1: {"metadata": MODELS[M1]}}},
              "results": [row("accuracy", M1, ds, "", "top1", 0.8) for ds in ("world:test", "world:shift-bg")]}
    tree = parse(render_html(report, report_dir=tmp_path))
    view = tree.root.find("section", id="six-factors")[0]
    assert not view.iter("svg")
    assert "needs at least 2 models" in view.all_text()


def test_render_cli_is_deterministic_and_fails_cleanly(rendered, tmp_path):
    _, report_dir, html, _ = rendered
    out = tmp_path / "again.html"
    cmd = [sys.executable, "-m", "clip_robustness.plugins.render", str(report_dir / "robustness.json"), "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8") == html  # same input, same bytes, across processes
    assert not [p for p in report_dir.iterdir() if p.name.endswith(".tmp")]  # the atomic write cleaned up

    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    done = subprocess.run([sys.executable, "-m", "clip_robustness.plugins.render", str(bad_json)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "not valid JSON" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not bad_json.with_suffix(".html").exists()


def test_render_cli_rejects_missing_and_malformed_files(tmp_path, capsys):
    wrong_shape = tmp_path / "list.json"
    wrong_shape.write_text("[1, 2]")
    bad_row = tmp_path / "bad_row.json"
    bad_row.write_text(json.dumps({"run": {}, "results": [{"property": "ood"}]}))
    for path, expected in ((tmp_path / "absent.json", "no such file"), (wrong_shape, "not a robustness.json report"),
                           (bad_row, "results[0] lacks the field 'model'")):
        assert render_cli([str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err, err
        assert not path.with_suffix(".html").exists()


@pytest.mark.parametrize("mutate, message", [
    (lambda rep: rep["results"][1].pop("metric"), r"results\[1\] lacks the field 'metric'"),
    (lambda rep: rep["results"][0].update(value="high"), r"results\[0\] \(top1\) value must be a number"),
    (lambda rep: rep["results"][2].update(gate={"verdict": "maybe"}), r"results\[2\] \(top1\) gate must be null or an object .*got \{'verdict': 'maybe'\}"),
    (lambda rep: rep.pop("results"), "not a robustness.json report \\(it needs a 'run' object and a 'results' list"),
])
def test_malformed_reports_raise_clear_errors(tmp_path, mutate, message):
    report = {"run": {}, "results": [row("accuracy", M1, "world:test", "", "top1", 0.5 + i / 10) for i in range(3)]}
    mutate(report)
    with pytest.raises(ValueError, match=message):
        validate_report(report)


# ---- the lmm property: LMM vs CLIP two-way accuracy, per split and class, where the LMM helps or hurts

LMM = "tiny-llava"
LMM_SPLITS = ("world:test", "world:shift-background", "imagenet-d:background")
LMM_CLASSES = [f"class{k:02d}" for k in range(LMM_CLASSES_PER_PANEL + 2)]  # two panels on imagenet-d
# Gains whose CI excludes 0 (cell -> (value, ci)); every other lmm_gain row has a CI straddling 0.
LMM_SIGNIFICANT = {
    (M1, "world:shift-background", None, "loglik"): (0.2, [0.12, 0.28]),
    (M1, "world:test", "class02", "loglik"): (0.3, [0.1, 0.5]),
    (M1, "imagenet-d:background", None, "generate"): (-0.15, [-0.25, -0.05]),
    (M1, "imagenet-d:background", "class05", "loglik"): (-0.1, [-0.18, -0.02]),
}


def lmm_rows() -> list[dict[str, Any]]:
    rows = []
    for m in (M1, M2):
        for ds in LMM_SPLITS:
            classes = LMM_CLASSES if ds.startswith("imagenet-d") else LMM_CLASSES[:3]
            for cls in (None, *classes):
                extra = {"class": cls} if cls else {}
                # the CLIP finds higher-numbered classes easier
                clip = 0.5 + 0.03 * (LMM_CLASSES.index(cls) if cls else 5)
                rows.append(row("lmm", m, ds, condition(lmm=LMM, **extra), "clip_two_way_accuracy", clip))
                for scoring in ("loglik", "generate"):
                    cond = condition(lmm=LMM, scoring=scoring, **extra)
                    gain, ci = LMM_SIGNIFICANT.get((m, ds, cls, scoring), (0.01, [-0.04, 0.06]))
                    rows.append(row("lmm", m, ds, cond, "lmm_accuracy", round(clip + gain, 6)))
                    rows.append({**row("lmm", m, ds, cond, "lmm_gain", gain), "ci": ci})
                    if scoring == "generate" and not cls:
                        rows.append(row("lmm", m, ds, cond, "answer_unmatched", 0.04, hib=False))
        for option in ("first", "second"):  # position-bias diagnostics: table only
            cond = condition(lmm=LMM, scoring="loglik", true_option=option)
            rows.append({**row("lmm", m, "world:test", cond, "lmm_gain", 0.9), "ci": [0.8, 0.95]})
    return rows


@pytest.fixture(scope="module")
def lmm_rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], str, TreeBuilder]:
    rows = lmm_rows()
    html = render_html({"run": {}, "results": rows}, report_dir=tmp_path_factory.mktemp("lmm"))
    return rows, html, parse(html)


def figures(node: Node) -> dict[str, Node]:
    return {f.find("div", **{"class": "fig-title"})[0].all_text(): f for f in node.iter("figure")}


def test_lmm_section_draws_splits_and_classes_per_model_and_lmm(lmm_rendered):
    _, html, tree = lmm_rendered
    lmm = section(tree, "lmm")
    drawn = figures(lmm)
    for m in (M1, M2):
        per_split = drawn[f"LMM vs CLIP per split · {m} · LMM {LMM}"]
        labels = per_split.find("svg")[0].all_text()
        assert all(ds in labels for ds in LMM_SPLITS) and "CLIP two-way" in labels and "LMM · loglik" in labels
        assert f"LMM vs CLIP per class · world:test · {m} · LMM {LMM}" in drawn  # 3 classes: one panel
    assert len(drawn) == 2 * (1 + 2 + 2) <= MAX_FIGURES  # per model: splits, one panel per world split, two imagenet-d
    # imagenet-d's 14 classes in two panels, the classes the CLIP finds hardest first
    first = drawn[f"LMM vs CLIP per class · imagenet-d:background · {M1} · LMM {LMM} (1/2)"].all_text()
    second = drawn[f"LMM vs CLIP per class · imagenet-d:background · {M1} · LMM {LMM} (2/2)"].all_text()
    assert all(c in first for c in LMM_CLASSES[:LMM_CLASSES_PER_PANEL])
    assert all(c in second and c not in first for c in LMM_CLASSES[LMM_CLASSES_PER_PANEL:])
    assert "true_option" not in " ".join(f.all_text() for f in drawn.values())  # diagnostics: table only
    assert_self_contained(html, tree)


def test_lmm_help_and_hurt_lists(lmm_rendered):
    rows, _, tree = lmm_rendered
    helps, hurts = lmm_help_hurt([r for r in rows if r["model"] == M1 and "true_option" not in r["condition"]])
    assert [(r["dataset"], r["condition"]) for r in helps] == [
        ("world:test", f"class=class02;lmm={LMM};scoring=loglik"),
        ("world:shift-background", f"lmm={LMM};scoring=loglik")]
    assert [(r["dataset"], r["condition"]) for r in hurts] == [
        ("imagenet-d:background", f"lmm={LMM};scoring=generate"),
        ("imagenet-d:background", f"class=class05;lmm={LMM};scoring=loglik")]

    def caption(model: str) -> str:
        fig = figures(section(tree, "lmm"))[f"LMM vs CLIP per split · {model} · LMM {LMM}"]
        return fig.find("figcaption")[0].all_text()

    text = caption(M1)
    order = ["Where the LMM helps", "world:test · class class02 · loglik +0.300 [0.1, 0.5]",
             "world:shift-background · loglik +0.200 [0.12, 0.28]", "Where it hurts",
             "imagenet-d:background · generate -0.150 [-0.25, -0.05]",
             "imagenet-d:background · class class05 · loglik -0.100 [-0.18, -0.02]"]
    assert [text.find(t) for t in order] == sorted(text.find(t) for t in order) and -1 not in map(text.find, order)
    assert "+0.010" not in text  # gains whose CI holds 0 are not named
    assert "largest first): none." in caption(M2) and "(CI below 0): none." in caption(M2)


def test_lmm_summary_quotes_the_loglik_gain(lmm_rendered):
    rows, _, tree = lmm_rendered
    cell = tree.root.find("tr", data_property="lmm")[0].find("td", data_model=M1)[0]
    loglik = [r["value"] for r in rows if r["model"] == M1 and r["metric"] == "lmm_gain"
              and r["condition"] == f"lmm={LMM};scoring=loglik"]
    assert cell.find("span", **{"class": "key"})[0].all_text() == f"lmm_gain {np.mean(loglik):.3g} (mean of 3 datasets)"


def test_figures_of_an_unchanged_report_come_from_the_cache(tmp_path, monkeypatch):
    """Issue 14: a warm re-render draws no figure and writes the same bytes as a render without the
    cache (notes of missing/corrupt sample files included); a changed row never hits."""
    from clip_robustness.plugins.html import figures, helper

    monkeypatch.setattr(helper, "START_AFTER", 10**9)  # counts this process's drawing: no helper beside it
    report_dir, cache = tmp_path / "rep", tmp_path / "cache"
    report_dir.mkdir()
    report = build_report(report_dir)
    drawn: list[str] = []
    draw = figures.FigureRenderer._draw
    monkeypatch.setattr(figures.FigureRenderer, "_draw",
                        staticmethod(lambda plot, salt, ctx: drawn.append(plot.title) or draw(plot, salt, ctx)))

    def html(rep: dict[str, Any], cache_dir: Path | None) -> str:
        write_html(rep, tmp_path / "out.html", report_dir=report_dir, cache_dir=cache_dir)
        return (tmp_path / "out.html").read_text(encoding="utf-8")

    plain = html(report, None)
    n_figures = len(drawn)
    assert n_figures > 5 and "is missing" in plain
    assert html(report, cache) == plain and len(drawn) == 2 * n_figures  # cold: every figure drawn once
    assert html(report, cache) == plain and len(drawn) == 2 * n_figures  # warm: none drawn
    timed = json.loads(json.dumps(report))
    timed["results"][0]["extra"] = {"images_per_s": 123.4}  # a measured throughput: no figure draws it
    assert html(timed, cache) == html(timed, None) and len(drawn) == 3 * n_figures
    changed = json.loads(json.dumps(report))
    first = next(r for r in changed["results"] if r["property"] == "accuracy" and r["metric"] == "top1")
    first["value"] = round(first["value"] - 0.2, 6)
    drawn.clear()
    assert html(changed, cache) == html(changed, None) and drawn  # a changed input is drawn again


def test_the_drawing_helper_draws_the_same_figures_under_the_same_keys(tmp_path, monkeypatch):
    """Issue 14: the helper process draws the page's views (here all of them, in reverse, left to finish)
    into the cache under the keys this process computes: the render after it draws nothing and writes the
    bytes of a render without any cache. Its inputs folder is removed when it stops."""
    from clip_robustness.plugins.html import figures, helper
    from clip_robustness.plugins.html.page import PageFigures

    report_dir, cache = tmp_path / "rep", tmp_path / "cache"
    report_dir.mkdir()
    report = build_report(report_dir)
    plain = render_html(report, report_dir=report_dir)
    views = PageFigures.of(report, report_dir, None).views
    assert views[0] == "@regression" and views[-1] == "@six-factor" and len(views) > 5
    monkeypatch.setattr(helper, "available_cores", lambda: 2)
    drawing = helper.DrawingHelper(report, report_dir, cache, views[::-1])
    drawing.before_drawing(helper.START_AFTER - 1)
    assert drawing._process is None  # not before this process drew START_AFTER figures
    drawing.before_drawing(helper.START_AFTER)
    assert drawing._process is not None and drawing._process.wait(timeout=300) == 0
    folder = drawing._folder
    drawing.stop()
    assert folder is not None and not folder.exists()
    drawn: list[str] = []
    draw = figures.FigureRenderer._draw
    monkeypatch.setattr(figures.FigureRenderer, "_draw",
                        staticmethod(lambda plot, salt, ctx: drawn.append(plot.title) or draw(plot, salt, ctx)))
    assert render_html(report, report_dir=report_dir, cache_dir=cache) == plain and drawn == []


def test_no_drawing_helper_on_one_core_or_for_a_cached_page(tmp_path, monkeypatch):
    from clip_robustness.plugins.html import helper

    report_dir, cache = tmp_path / "rep", tmp_path / "cache"
    report_dir.mkdir()
    report = build_report(report_dir)
    started: list[Any] = []
    start = helper.DrawingHelper._start
    monkeypatch.setattr(helper.DrawingHelper, "_start", lambda self: started.append(self) or start(self))
    monkeypatch.setattr(helper, "available_cores", lambda: 1)
    one_core = render_html(report, report_dir=report_dir, cache_dir=cache)
    assert len(started) == 1 and started[0]._process is None and started[0]._folder is None  # asked, not started
    monkeypatch.setattr(helper, "available_cores", lambda: 2)
    assert render_html(report, report_dir=report_dir, cache_dir=cache) == one_core and len(started) == 1  # all cached


def test_a_view_that_breaks_costs_its_figures_not_the_report(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setitem(PROPERTIES, "accuracy", dataclasses.replace(PROPERTIES["accuracy"], view="no_such_module:plots"))
    html = render_html({"run": {}, "results": [row("accuracy", M1, "world:test", "", "top1", 0.5)]},
                       report_dir=tmp_path)
    assert "the figures of accuracy could not be drawn (ValueError: property &#39;accuracy&#39;: its view" in html
    assert "world:test" in html  # the table still lists the cell
