"""The report row and the report file, typed: one definition of a row's fields, its key and its checks.

A row is built as a :class:`Row` where it is recorded (clip_robustness.plugins.recorder), checked there, and
travels as its JSON object (``Row.to_json``: the fields in the order of docs/architecture.md, "Report row").
Every reader of a ``robustness.json`` (the ``--baseline`` check and comparison, the shard merge, the
re-render) goes through :func:`load_report`, so a file is judged one way and a bad one is refused with one
sentence naming the file and the row. No dependency beyond the standard library: the plugin imports this
at start-up.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

KEY_FIELDS = ("property", "model", "dataset", "condition", "metric")  # what names one cell of the report
REQUIRED = (*KEY_FIELDS, "value")  # a file from an older harness may lack the rest; they default
GATE_KINDS = ("bound", "regression")
VERDICTS = ("pass", "fail", "inconclusive")


def row_key(row: Row | dict[str, Any]) -> tuple[str, ...]:
    """(property, model, dataset, condition, metric): the cell a row fills, for a Row or its JSON object.
    Two rows with one key are one cell measured twice (a merge refuses differing values)."""
    return tuple(row[k] if isinstance(row, dict) else getattr(row, k) for k in KEY_FIELDS)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass
class Row:
    """One metric cell of the report (docs/architecture.md, "Report row"); fields in the JSON's order."""

    property: str  # the property's marker (clip_robustness.plugins.properties)
    model: str  # the model id
    dataset: str  # e.g. "world:test", "imagenet"
    condition: str  # canonical `key=value;...` spec (clip_robustness.fixtures.conditions), "" when clean
    metric: str  # a name in clip_robustness.plugins.metrics.METRICS
    value: float | None  # None: undefined, the reason in extra["undefined"]
    ci: list[float | None] | None = None  # [lo, hi] of the 95% interval
    n: int | None = None  # items the value was computed from
    higher_is_better: bool | None = None  # the metric's direction, copied from the registry when recorded
    gate: dict[str, Any] | None = None  # the worst verdict of the row's gates (clip_robustness.plugins.gates)
    test: str | None = None  # the pytest node id that recorded it
    samples: str | None = None  # "samples/<digest>.npz", relative to the report folder
    extra: dict[str, Any] = field(default_factory=dict)  # anything else the test or a hook adds

    def to_json(self) -> dict[str, Any]:
        """The row's JSON object, fields in their documented order (the shape robustness.json holds)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, obj: Any, where: str = "row") -> Row:
        """A Row from its JSON object; a ValueError names ``where`` and the first problem."""
        problems = row_problems(obj, where)
        if problems:
            raise ValueError(problems[0])
        return cls(**obj)

    def validate(self, where: str = "row") -> list[str]:
        """One sentence per problem of this row (empty when it is well-formed)."""
        return row_problems(self.to_json(), where)


def row_problems(obj: Any, where: str) -> list[str]:
    """What is wrong with a row's JSON object, one sentence per problem, each naming ``where``."""
    row = obj if isinstance(obj, dict) else {}
    missing = [k for k in REQUIRED if k not in row]
    if missing:  # a list, a number, or a row of another tool: the first missing field says enough
        return [f"{where} lacks the field {missing[0]!r} (every row needs {', '.join(REQUIRED)}); pass a "
                "robustness.json written by this harness"]
    known = {f.name for f in fields(Row)}
    problems = [f"{where} has an unknown field {k!r} (a row holds {', '.join(known)}); put extra data under 'extra'"
                for k in row if k not in known]
    for key in KEY_FIELDS:
        named = key in ("property", "model", "metric")  # these name something; dataset and condition may be ""
        if not isinstance(row[key], str) or (named and not row[key]):
            problems.append(f"{where} needs a {'non-empty ' if named else ''}string {key!r}; got {row[key]!r}")
    label = f"{where} ({row['metric']})" if isinstance(row["metric"], str) else where
    if row["value"] is not None and not _number(row["value"]):
        problems.append(f"{label} value must be a number or null; got {row['value']!r}")
    ci = row.get("ci")
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(c is None or _number(c) for c in ci)):
        problems.append(f"{label} ci must be [lo, hi] or null; got {ci!r}")
    n = row.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        problems.append(f"{label} n must be a count of items or null; got {n!r}")
    if row.get("higher_is_better") is not None and not isinstance(row["higher_is_better"], bool):
        problems.append(f"{label} higher_is_better must be true or false; got {row['higher_is_better']!r}")
    gate = row.get("gate")
    if gate is not None and (not isinstance(gate, dict) or gate.get("verdict") not in VERDICTS
                             or gate.get("kind", "bound") not in GATE_KINDS):
        problems.append(f"{label} gate must be null or an object with kind in {GATE_KINDS} and verdict in "
                        f"{VERDICTS}; got {gate!r}")
    for key in ("test", "samples"):
        if row.get(key) is not None and not isinstance(row[key], str):
            problems.append(f"{label} {key} must be a string or null; got {row[key]!r}")
    if not isinstance(row.get("extra", {}), dict):
        problems.append(f"{label} extra must be an object; got {row['extra']!r}")
    return problems


class ReportError(ValueError):
    """A robustness.json that cannot be used; the message is one sentence naming the file (and row)."""


@dataclass
class Report:
    """A robustness.json: the run's metadata (docs/architecture.md, "run") and its rows."""

    run: dict[str, Any]
    rows: list[Row]

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "results": [r.to_json() for r in self.rows]}

    @classmethod
    def from_json(cls, obj: Any, source: str = "report") -> Report:
        """A Report from a parsed robustness.json; a ReportError names ``source`` and the first problem
        (and how many more there are)."""
        problems = cls.problems(obj, source)
        if problems:
            more = f" ({len(problems) - 1} more problem(s) in the file)" if len(problems) > 1 else ""
            raise ReportError(problems[0] + more)
        return cls(dict(obj["run"]), [Row(**r) for r in obj["results"]])

    def validate(self, source: str = "report") -> list[str]:
        """One sentence per problem of this report (empty when it is well-formed)."""
        return self.problems(self.to_json(), source)

    @staticmethod
    def problems(obj: Any, source: str) -> list[str]:
        if not isinstance(obj, dict) or not isinstance(obj.get("results"), list) or not isinstance(obj.get("run"), dict):
            got = type(obj).__name__ if not isinstance(obj, dict) else f"an object with keys {sorted(obj)}"
            return [f"{source}: not a robustness.json report (it needs a 'run' object and a 'results' list; got {got})"]
        return [p for i, row in enumerate(obj["results"]) for p in row_problems(row, f"{source}: results[{i}]")]


def load_report(path: Path | str) -> Report:
    """Read and check a robustness.json; a ReportError says in one sentence what is wrong with which file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file (pass the robustness.json of a run, e.g. "
                          "reports/robustness.json)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: cannot read it ({err})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON ({err})") from None
    return Report.from_json(obj, str(path))
