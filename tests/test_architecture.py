"""The structure docs/architecture.md promises: no import cycle among the plugins/ and fixtures/ modules, and
a new property added with exactly the steps of its "Adding a property" section."""
from __future__ import annotations

import ast
import json
from pathlib import Path

from tests.conftest import RANDOM_MODEL, REPO

PACKAGE = "clip_robustness"
LAYERS = ("plugins", "fixtures")


def module_names(root: Path, layers: tuple[str, ...] = LAYERS) -> dict[str, Path]:
    """Dotted name (``clip_robustness.plugins.report``) -> file, for every module under the layers."""
    out = {}
    for layer in layers:
        for path in sorted((root / layer).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join((PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return out


def import_graph(root: Path, layers: tuple[str, ...] = LAYERS) -> dict[str, set[str]]:
    """Module -> the modules of the layers it imports, anywhere in the file: at module level and inside
    functions alike (a function-level import is a dependency deferred, not removed). ``from P import x``
    counts ``P.x`` when that is a module, else ``P``; relative imports are resolved against the file."""
    modules = module_names(root, layers)

    def known(name: str) -> str | None:  # the innermost module of ours that `name` is in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            deps |= {m for m in map(known, targets) if m and m != name}
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_plugins_and_fixtures_import_graph_has_no_cycle():
    graph = import_graph(REPO)
    # the graph is read, not empty: the hook module registers the fixtures, which hand the recorder its channel
    assert f"{PACKAGE}.fixtures.pytest_fixtures" in graph[f"{PACKAGE}.plugins.robustness"]
    assert f"{PACKAGE}.plugins.recorder" in graph[f"{PACKAGE}.fixtures.pytest_fixtures"]
    found = cycles(graph)
    assert not found, "import cycles (each a group of modules that import one another, directly or not): " + "; ".join(
        " <-> ".join(c) + " [" + ", ".join(f"{a} -> {sorted(graph[a] & set(c))}" for a in c) + "]" for c in found)


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a cycle closed by a function-level import, and a relative one, are found."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "fixtures" / "sub").mkdir(parents=True)
    (tmp_path / "plugins" / "a.py").write_text("from clip_robustness.fixtures import b\n")
    (tmp_path / "fixtures" / "b.py").write_text("def f():\n    from clip_robustness.plugins.a import g\n")
    (tmp_path / "fixtures" / "sub" / "__init__.py").write_text("from . import c\n")
    (tmp_path / "fixtures" / "sub" / "c.py").write_text("from ..b import f\nfrom .d import x\n")
    (tmp_path / "fixtures" / "sub" / "d.py").write_text("def x():\n    from . import c\n")
    graph = import_graph(tmp_path)
    assert graph[f"{PACKAGE}.fixtures.sub"] == {f"{PACKAGE}.fixtures.sub.c"}  # `from . import c` is the module
    assert cycles(graph) == [[f"{PACKAGE}.fixtures.b", f"{PACKAGE}.plugins.a"],
                             [f"{PACKAGE}.fixtures.sub.c", f"{PACKAGE}.fixtures.sub.d"]]


# ------------------------------------------------------------- a new property, with the documented steps

# Step 1: the test module (docs/architecture.md, "Adding a property").
TOY_TEST = '''
import pytest

from clip_robustness.fixtures.embed import classifier_logits

pytestmark = pytest.mark.prompt_agreement


def test_prompt_agreement(clip, world, cache, record):
    """Do two prompt template sets make the same top-1 decision on the world's test split?"""
    dataset = world("test")
    openai = classifier_logits(clip, dataset, cache, templates="openai")  # (N, C)
    single = classifier_logits(clip, dataset, cache, templates="single")  # (N, C)
    record.proportion("template_agreement", openai.argmax(1) == single.argmax(1), dataset=dataset.name,
                      samples={"logits": openai, "other_logits": single})
'''

# Step 2: its registry entry and its metric, with how the metric is recomputed from the samples.
TOY_CONFTEST = '''
import numpy as np

from clip_robustness.plugins.metrics import MetricInfo
from clip_robustness.plugins.properties import Property, register


def agreement(logits, other_logits):
    return float(np.mean(logits.argmax(1) == other_logits.argmax(1)))


register(Property("prompt_agreement", "Prompt agreement", "same top-1 under two prompt template sets",
                  ("template_agreement",)),
         metrics=[MetricInfo("template_agreement", None, True, 0.0, 1.0,
                             "share of items with the same top-1 under the openai and single templates",
                             recompute=(("logits", "other_logits"), agreement))])
'''

# Step 3: its gate.
TOY_THRESHOLDS = '''
[[thresholds]]
property = "prompt_agreement"
metric = "template_agreement"
min = 0.0
reason = "two template sets of one model agree at least sometimes"
'''


def test_a_property_added_with_the_documented_steps_is_recorded_gated_and_reported(pytester, run_harness):
    """The files docs/architecture.md lists under "Adding a property", and no other, give a property whose
    row is recorded, gated by its thresholds rule and written to robustness.json (and the HTML)."""
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = doc.split("## Adding a property", 1)[1].split("\n## ", 1)[0]
    for name in ("test_<name>.py", "conftest.py", "thresholds.toml", "register(", "recompute=", "[[thresholds]]"):
        assert name in section, f"docs/architecture.md 'Adding a property' no longer mentions {name}"
    pytester.makepyfile(test_prompt_agreement=TOY_TEST, conftest=TOY_CONFTEST)
    pytester.makefile(".toml", thresholds=TOY_THRESHOLDS)
    result = run_harness("--model", RANDOM_MODEL, "--limit", "20", "--thresholds", "thresholds.toml",
                         "--report-dir", "reports")
    result.assert_outcomes(passed=1)
    rows = json.loads((pytester.path / "reports" / "robustness.json").read_text())["results"]
    (row,) = rows
    assert (row["property"], row["model"], row["dataset"], row["metric"], row["n"]) == (
        "prompt_agreement", RANDOM_MODEL, "world:test", "template_agreement", 20)
    assert 0.0 <= row["value"] <= 1.0 and row["ci"][0] <= row["value"] <= row["ci"][1]
    assert row["gate"]["kind"] == "bound" and row["gate"]["verdict"] == "pass"
    assert "thresholds.toml" in row["gate"]["rule"]
    assert (pytester.path / "reports" / row["samples"]).is_file()
    assert (pytester.path / "reports" / "robustness.html").is_file()
    # the marker came from the registry: --strict-markers accepts it and -m selects it
    assert run_harness("--model", RANDOM_MODEL, "--limit", "20", "-m", "prompt_agreement",
                       "--collect-only", "-q").ret == 0
