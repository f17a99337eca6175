"""Gates: a threshold rule applied to a report row gives a verdict and a one-sentence message.

A bound passes only when the metric's whole confidence interval is on the right side, fails only when
the whole interval is on the wrong side, and is *inconclusive* otherwise (the data cannot tell).
"""
from __future__ import annotations

import difflib
import math
import re
from fnmatch import fnmatchcase
from typing import Any, Iterable

from clip_robustness.plugins.config import Threshold

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


class InconclusiveGateWarning(UserWarning):
    """A bound whose confidence interval straddles it (fails the run only with --rb-strict/--strict)."""


def select_threshold(rules: Iterable[Threshold], row: dict[str, Any], *, kind: str = "bound") -> Threshold | None:
    """The last matching rule with a bound (or ``max_drop``) wins: --thresholds overrides pyproject."""
    chosen = None
    for rule in rules:
        if not rule.matches(row):
            continue
        if kind == "bound" and (rule.min is not None or rule.max is not None):
            chosen = rule
        if kind == "regression" and rule.max_drop is not None:
            chosen = rule
    return chosen


def _fmt(x: float | None) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def describe_cell(row: dict[str, Any]) -> str:
    where = f"for {row['model']} on {row['dataset']}"
    return where + (f" under {row['condition']}" if row.get("condition") else "")


def bound_verdict(row: dict[str, Any], rule: Threshold) -> dict[str, Any]:
    """Evaluate a min/max rule on a row (needs ``value`` and optionally ``ci``)."""
    value = row.get("value")
    lo, hi = row.get("ci") or (value, value)
    lo = value if lo is None or math.isnan(lo) else lo
    hi = value if hi is None or math.isnan(hi) else hi
    metric = f"{row['metric']}={_fmt(value)}"
    if row.get("ci"):
        metric += f" (95% CI {_fmt(lo)}–{_fmt(hi)})"
    gate: dict[str, Any] = {"kind": "bound", "min": rule.min, "max": rule.max, "rule": rule.origin}
    if value is None or math.isnan(value):
        why = (row.get("extra") or {}).get("undefined") or "non-finite value"
        bound = f">= {_fmt(rule.min)}" if rule.min is not None else f"<= {_fmt(rule.max)}"
        gate.update(verdict=FAIL, message=f"{row['metric']} is undefined {describe_cell(row)} ({why}), so the bound "
                                          f"{bound} cannot be met.")
        return gate
    no_interval = (row.get("extra") or {}).get("ci_note") if not row.get("ci") else None
    if no_interval:  # the interval could not be computed (one image per group): a point alone decides nothing
        gate.update(verdict=INCONCLUSIVE, message=f"{metric} has no confidence interval {describe_cell(row)} "
                                                  f"({no_interval}), so its bound cannot be decided.")
        return gate
    verdicts = []
    if rule.min is not None:
        verdicts.append((PASS if lo >= rule.min else FAIL if hi < rule.min else INCONCLUSIVE,
                         f"is below the bound {_fmt(rule.min)}", f"straddles the bound {_fmt(rule.min)}"))
    if rule.max is not None:
        verdicts.append((PASS if hi <= rule.max else FAIL if lo > rule.max else INCONCLUSIVE,
                         f"exceeds the bound {_fmt(rule.max)}", f"straddles the bound {_fmt(rule.max)}"))
    order = {FAIL: 0, INCONCLUSIVE: 1, PASS: 2}
    verdict, fail_text, unsure_text = min(verdicts, key=lambda v: order[v[0]])
    gate["verdict"] = verdict
    if verdict == FAIL:
        gate["message"] = f"{metric} {fail_text} {describe_cell(row)}."
    elif verdict == INCONCLUSIVE:
        gate["message"] = f"{metric} {unsure_text} {describe_cell(row)}: more samples are needed to decide."
    else:
        gate["message"] = f"{metric} meets its bound {describe_cell(row)}."
    if rule.reason:
        gate["message"] += f" ({rule.reason})"
    return gate


# --------------------------------------------------------------------------------------------
# Rule audit: which rule gated what in this run (a rule that gates nothing must not pass silently)
# --------------------------------------------------------------------------------------------

APPLIED, UNUSED, UNMATCHED, NOT_APPLICABLE = "applied", "unused", "unmatched", "not applicable"


def _gates_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    extra = row.get("extra") or {}
    return extra.get("gates") or ([row["gate"]] if row.get("gate") else [])


def did_you_mean(pattern: str, values: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a glob that matched none of ``values`` but is close to one (a typo);
    a glob is compared by its literal prefix (``embeded:*`` -> ``embedded:*``)."""
    literal = re.split(r"[*?[]", pattern, maxsplit=1)[0]
    if not literal:
        return ""
    n = len(literal)  # a glob's literal prefix is compared with value prefixes of about its length
    prefixes = sorted({v[:k] for v in values for k in range(max(1, n - 2), n + 3)}
                      if literal != pattern else set(values))
    close = difflib.get_close_matches(literal, prefixes, n=1, cutoff=0.75)
    return f" (did you mean {close[0] + pattern[len(literal):]!r}?)" if close else ""


def names_known_model(pattern: str) -> bool:
    """Whether a rule's model glob names a model that exists beyond this run: an embedded zoo model, or a spec
    of a known open_clip architecture (``ViT-L-14:openai``, ``ViT-B-32@ft.pt``). Such a rule is for another
    run's model even when its name is close to one of this run's (``embedded:rn-clip`` in a run of
    ``embedded:rn-clip-narrow``); a close name that names nothing known is a typo."""
    try:
        from clip_robustness.fixtures import zoo
        from clip_robustness.fixtures.models import known_architectures

        if any(fnmatchcase(f"embedded:{entry.name}", pattern) for entry in zoo.list_models()):
            return True
        literal = re.split(r"[*?[]", pattern, maxsplit=1)[0]
        arch, sep, _ = literal.partition("@") if "@" in literal else literal.partition(":")
        return bool(sep) and arch != "embedded" and arch in known_architectures()
    except (OSError, ValueError, KeyError):  # an unreadable zoo index: no name counts as known
        return False


def _rule_status(rule: Threshold, rows: list[dict[str, Any]], matched: int, decided: int,
                 baseline: bool, unmeasured: list[dict[str, Any]] = ()) -> tuple[str, str]:
    if rule.min is None and rule.max is None and not baseline:
        return NOT_APPLICABLE, "a max_drop rule needs --baseline"
    if matched:
        if decided:
            return APPLIED, ""
        if rule.min is None and rule.max is None:
            return UNUSED, "none of the cells it matches has a counterpart in the baseline"
        return UNUSED, "a later rule (or a pytest_robustness_threshold hook) gates every cell it matches"
    # Matched nothing: a typo when its property and model ran, else rules for another selection.
    scope = [r for r in rows if fnmatchcase(r["property"], rule.property) and fnmatchcase(r["model"], rule.model)]
    # A max_drop rule whose cells the baseline holds but this run did not measure compares nothing that it
    # was meant to (the baseline's run was given a --data set or measured cells this run was not).
    theirs = [c for c in unmeasured if rule.matches(c)] if rule.max_drop is not None and baseline else []
    if theirs and any(fnmatchcase(r["property"], rule.property) for r in rows):
        return UNMATCHED, _unmeasured_note(theirs)
    if not scope:
        if not any(fnmatchcase(r["property"], rule.property) for r in rows):
            note = f"no {rule.property!r} cell was measured in this run"
            if theirs:  # the property was not selected at all: a rule for another selection, but say so
                note += f" (the baseline has {_cells(len(theirs))} it matches)"
            return NOT_APPLICABLE, note
        hint = did_you_mean(rule.model, {r["model"] for r in rows})
        if hint and not names_known_model(rule.model):  # close to a run model and naming no other: a typo
            return UNMATCHED, f"model {rule.model!r} matches none of this run's models" + hint
        return NOT_APPLICABLE, f"no model of this run matches {rule.model!r}" + hint
    for key in ("metric", "dataset", "condition"):
        pattern, values = getattr(rule, key), {r[key] for r in scope}
        if not any(fnmatchcase(v, pattern) for v in values):
            hint = did_you_mean(pattern, values)
            if key == "dataset" and not hint:  # a dataset this run was not given (a real --data set), not a typo
                return NOT_APPLICABLE, f"no {pattern!r} cell was measured in this run"
            return UNMATCHED, (f"{key} {pattern!r} matches none of the {len(scope)} {rule.property} cells of "
                               f"{rule.model!r}" + hint)
    return UNMATCHED, "no cell matches its metric, dataset and condition together"


def _cells(n: int) -> str:
    return f"{n} cell{'s' * (n != 1)}"


def _unmeasured_note(cells: list[dict[str, Any]]) -> str:
    """Why a max_drop rule compared nothing: the baseline's cells it matches, which this run did not measure."""
    datasets = sorted({c["dataset"] for c in cells})
    where = ", ".join(map(repr, datasets[:4])) + (f" and {len(datasets) - 4} more" if len(datasets) > 4 else "")
    return (f"the baseline has {_cells(len(cells))} it matches (dataset {where}) that this run did not measure, so "
            "it compared nothing; pass the same --data (and selection) as the baseline's run")


def rule_usage(rules: Iterable[Threshold], rows: list[dict[str, Any]], *, baseline: bool,
               unmeasured: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Per rule: its patterns, how many cells it matched, gated (bound) and compared (max_drop), and a status:
    applied, unused (matched but decided nothing), unmatched (its property and model ran, yet no cell
    matched: a typo, or a max_drop rule whose cells only the baseline has) or not applicable (its property
    or model did not run). ``unmeasured``: the baseline's cells (named by this run's model ids) that no row
    of this run measured."""
    out = []
    for rule in rules:
        matched = sum(rule.matches(r) for r in rows)
        decided = [g for r in rows for g in _gates_of(r) if rule.origin and g.get("rule") == rule.origin]
        gated = sum(g["kind"] == "bound" for g in decided)
        compared = sum(g["kind"] == "regression" for g in decided)
        status, note = _rule_status(rule, rows, matched, gated + compared, baseline, unmeasured)
        out.append({"origin": rule.origin, "property": rule.property, "metric": rule.metric, "model": rule.model,
                    "dataset": rule.dataset, "condition": rule.condition, "min": rule.min, "max": rule.max,
                    "max_drop": rule.max_drop, "matched": matched, "gated": gated, "compared": compared,
                    "status": status, "note": note})
    return out


def baseline_cells(path: Any, model_map: dict[str, str], model_ids: Iterable[str]) -> dict[str, Any] | None:
    """What the audit needs of the ``--baseline`` report: the models it holds, and its cells of this run's models
    (``model_map``: --baseline-model, run id -> baseline id) as ``[property, run model id, dataset, condition,
    metric]``. None when the file cannot be read (the audit then counts this run's cells only)."""
    from clip_robustness.plugins.config import ConfigError, load_baseline

    try:
        rows = load_baseline(path).rows
    except ConfigError:
        return None
    by_base: dict[str, list[str]] = {}
    for model in model_ids:
        by_base.setdefault(model_map.get(model, model), []).append(model)
    cells = sorted({(r.property, model, r.dataset, r.condition, r.metric) for r in rows for model in by_base.get(r.model, ())})
    return {"holds": sorted({r.model for r in rows}), "cells": [list(c) for c in cells]}


_KEY = ("property", "model", "dataset", "condition", "metric")


def baseline_usage(rows: list[dict[str, Any]], baseline: str,
                   cells: dict[str, Any] | None = None) -> dict[str, Any]:
    """How many of each model's cells were compared with the baseline; with ``cells`` (:func:`baseline_cells`),
    the models the baseline holds and its cells of this run's models that no row measured (``unmeasured``)."""
    models: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = models.setdefault(row["model"], {"cells": 0, "compared": 0})
        counts["cells"] += 1
        counts["compared"] += "comparison" in (row.get("extra") or {})
    out: dict[str, Any] = {"path": baseline, "cells": len(rows),
                           "compared": sum(c["compared"] for c in models.values()), "models": dict(sorted(models.items()))}
    if cells is not None:
        measured = {tuple(row[k] for k in _KEY) for row in rows}
        out["holds"] = list(cells.get("holds") or [])
        out["unmeasured"] = sorted(list(c) for c in {tuple(c) for c in cells.get("cells") or []} - measured)
    return out


def unmeasured_summary(base: dict[str, Any]) -> str:
    """``; 2 baseline cells have no counterpart in this run: wx (2 accuracy)`` for the summary line ('' when none)."""
    cells = base.get("unmeasured") or []
    if not cells:
        return ""
    groups: dict[str, dict[str, int]] = {}
    for prop, _, dataset, _, _ in cells:
        groups.setdefault(dataset or "(no dataset)", {}).setdefault(prop, 0)
        groups[dataset or "(no dataset)"][prop] += 1
    shown = [f"{d} ({', '.join(f'{n} {p}' for p, n in sorted(props.items()))})" for d, props in sorted(groups.items())]
    more = f" and {len(shown) - 4} more datasets" if len(shown) > 4 else ""
    n = len(cells)
    return (f"; {n} baseline cell{'s' * (n != 1)} {'have' if n != 1 else 'has'} no counterpart in this run: "
            + ", ".join(shown[:4]) + more)


def _zero_compared(base: dict[str, Any], baseline: str, rows: list[dict[str, Any]],
                   baseline_models: dict[str, str] | None) -> str:
    """Why a baseline was compared with no cell, and the fix that fits: --baseline-model when this run's models
    are not in the baseline under their names, else which cells are not there (the baseline measured others)."""
    head = f"--baseline {baseline} was compared with 0 of the {base['cells']} measured cells"
    holds = base.get("holds")
    if holds is None:  # the baseline file could not be read here (a merge elsewhere): the general advice
        return (f"{head}: none has a counterpart there (same model, property, dataset, condition and metric), so "
                "no regression gate checked anything; pass --baseline-model MODEL=BASELINE_MODEL or a baseline of "
                "the same models and properties.")
    mapped = {m: (baseline_models or {}).get(m, m) for m in base["models"]}
    missing = sorted(m for m, b in mapped.items() if b not in holds)
    held = ", ".join(holds) or "none"
    if missing and not baseline_models:
        return (f"{head}: none has a counterpart there (it holds models [{held}], not {', '.join(missing)}), so no "
                "regression gate checked anything; pass --baseline-model MODEL=BASELINE_MODEL to name the "
                "baseline's model.")
    targets = sorted(set(mapped.values()))
    how = ("paired by --baseline-model " + ", ".join(f"{m}={b}" for m, b in sorted(mapped.items()) if m != b)
           if any(m != b for m, b in mapped.items()) else "paired by name")
    theirs = len(base.get("unmeasured") or [])
    sample = sorted({f"{r['property']}/{r['metric']} on {r['dataset'] or '-'}" for r in rows})
    unpaired = ", ".join(sample[:3]) + (f" and {len(sample) - 3} more" if len(sample) > 3 else "")
    return (f"{head}: none has a counterpart there that could be compared (the baseline holds models [{held}]; of "
            f"{', '.join(targets)}, {how}, {theirs} of its cells are not among this run's; this run's cells that "
            f"could not be compared: {unpaired}), so no regression gate checked anything; pass a baseline measured "
            "with the same properties, --data and options as this run (the start-up warnings say what differs).")


def audit(rules: Iterable[Threshold], rows: list[dict[str, Any]], *, baseline: str | None,
          strict: bool, selection: bool = False, shard: Any = None,
          baseline_models: dict[str, str] | None = None, baseline_cells: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's gate audit for the report (``run["gates"]``): rule usage, baseline usage, and the
    sentences that fail the run (``failures``) or only warn (``warnings``). ``selection``: a -k/-m or
    node-id selection is active, so an unmatched rule's cells may have been deselected (it only warns).
    ``shard``: (I, N) of a --shard run, whose rows are a part of the run: what needs the whole run's rows (an
    unmatched rule, a baseline compared with no cell) only warns, and the merged report's audit decides.
    ``baseline_models``: --baseline-model; ``baseline_cells``: :func:`baseline_cells` of the baseline (None: unknown)."""
    rules = list(rules)
    base = baseline_usage(rows, baseline, baseline_cells) if baseline is not None else None
    usage = rule_usage(rules, rows, baseline=baseline is not None,
                       unmeasured=[dict(zip(_KEY, c)) for c in (base or {}).get("unmeasured") or []])
    failures: list[str] = []
    warnings: list[str] = []
    part = f" (this is shard {shard[0]}/{shard[1]}: its cells may be on another shard; the merged report's audit " \
           "decides)" if shard else ""
    for rule in usage:
        if rule["status"] == UNMATCHED:
            fails = strict and not selection and not shard
            why = "" if fails else (" (a -k/-m selection is active, so its cells may be deselected)" if selection
                                    else part if shard else " (--rb-strict fails the run on it)")
            (failures if fails else warnings).append(
                f"threshold rule {rule['origin']} matched no cell: {rule['note']}{why}.")
    if base and base["cells"] and not base["compared"]:
        if shard:  # the baseline's cells may be on the other shards: the whole run's rows decide
            warnings.append(f"--baseline {baseline} was compared with none of the {base['cells']} cells of shard "
                            f"{shard[0]}/{shard[1]}; that fails nothing here, as other shards may measure the cells "
                            "the baseline has: the merged report's audit fails the run if no shard compared any.")
        else:
            failures.append(_zero_compared(base, baseline, rows, baseline_models))
    elif base:
        for model, counts in base["models"].items():
            if not counts["compared"]:
                warnings.append(f"{model}: none of its {counts['cells']} cells has a counterpart in --baseline "
                                f"{baseline}, so it was not compared.")
    return {"rules": usage, "baseline": base, "failures": failures, "warnings": warnings}


def rule_sources(rules: Iterable[Threshold]) -> str:
    """``9 rules (7 from pyproject.toml [tool.robustness], 2 from gates.toml)`` for the header."""
    rules = list(rules)
    sources: dict[str, int] = {}
    for rule in rules:
        source = re.sub(r"( thresholds)?\[\d+\]$", "", rule.origin) or "a conftest hook"
        sources[source] = sources.get(source, 0) + 1
    where = ", ".join(f"{n} from {s}" for s, n in sources.items())
    return f"{len(rules)} rule{'s' * (len(rules) != 1)}" + (f" ({where})" if where else "")
