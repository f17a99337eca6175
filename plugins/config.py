"""The run's configuration: defaults in code, ``[tool.robustness]`` in pyproject.toml, CLI flags last.

Everything is validated here, at the edge, so a bad value stops the run before any model loads
with a message that names the value and the accepted forms.
"""
from __future__ import annotations

import fnmatch
import functools
import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from clip_robustness.fixtures.models import ModelSpec, ModelSpecError, parse_model_spec

DEFAULT_SEED = 0
# The embedded zoo's gates, shipped with the package; a project's rules and --thresholds come after them.
DEFAULT_THRESHOLDS = Path(__file__).with_name("default_thresholds.toml")
PYPROJECT_KEYS = {"thresholds", "models", "templates", "strict", "lmms"}  # allowed keys of [tool.robustness]
THRESHOLD_KEYS = {"property", "metric", "model", "dataset", "condition", "min", "max", "max_drop", "reason"}
DATA_NAME = re.compile(r"^[A-Za-z0-9][\w.:+-]*$")


class ConfigError(ValueError):
    """Invalid configuration; the plugin turns it into a pytest usage error (no traceback)."""


@dataclass(frozen=True)
class Threshold:
    """One gate rule; the patterns are fnmatch globs over the report row's fields."""

    property: str
    metric: str
    model: str = "*"
    dataset: str = "*"
    condition: str = "*"
    min: float | None = None  # value (its whole CI) must be >= min
    max: float | None = None  # value (its whole CI) must be <= max
    max_drop: float | None = None  # regression tolerance vs the baseline, in metric units
    reason: str = ""
    origin: str = ""  # where the rule came from, for messages

    def matches(self, row: dict[str, Any]) -> bool:
        return all(
            fnmatch.fnmatchcase(str(row.get(key, "")), getattr(self, key))
            for key in ("property", "metric", "model", "dataset", "condition")
        )


def parse_threshold(raw: Any, origin: str) -> Threshold:
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: each threshold must be a table/object (property, metric and a bound), "
                          f"got {_toml_type(raw)} {raw!r}")
    unknown = set(raw) - THRESHOLD_KEYS
    if unknown:
        raise ConfigError(f"{origin}: unknown threshold key(s) {sorted(unknown)}; allowed: {sorted(THRESHOLD_KEYS)}")
    for key in ("property", "metric"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{origin}: threshold {raw!r} needs a '{key}' string")
    _check_rule_names(raw["property"], raw["metric"], origin)
    bounds = {k: raw.get(k) for k in ("min", "max", "max_drop")}
    if all(v is None for v in bounds.values()):
        raise ConfigError(f"{origin}: threshold {raw!r} needs at least one of min, max, max_drop")
    for key, value in bounds.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{origin}: threshold {key}={value!r} must be a number")
    for key, value in bounds.items():
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{origin}: {key} = {value} is not a finite number, so the rule can never be "
                              f"decided; give a number on the metric's scale, e.g. {key} = "
                              f"{'0.02' if key == 'max_drop' else '0.9'}")
    if bounds["max_drop"] is not None and bounds["max_drop"] < 0:
        raise ConfigError(f"{origin}: max_drop must be >= 0, got {bounds['max_drop']}")
    if bounds["min"] is not None and bounds["max"] is not None and bounds["min"] > bounds["max"]:
        raise ConfigError(f"{origin}: min = {bounds['min']} is above max = {bounds['max']}, so no value can meet "
                          "both; swap them or fix the one that is wrong")
    _check_rule_bounds(raw["metric"], bounds, origin)
    for key in ("model", "dataset", "condition", "reason"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{origin}: threshold {key}={raw[key]!r} must be a string")
    return Threshold(**{k: v for k, v in raw.items()}, origin=origin)


def _check_rule_bounds(metric: str, bounds: dict[str, Any], origin: str) -> None:
    """A bound outside the range the metric can take (``MetricInfo.lower_bound..upper_bound``; for a glob, the
    widest range of the metrics it names) is either always met or never met: a wrong scale (``min = 90``
    for a 0..1 metric) or a typo. So is a ``max_drop`` at least as wide as that range (no drop can exceed it)."""
    from clip_robustness.plugins.metrics import METRICS

    infos = [info for name, info in METRICS.items() if fnmatch.fnmatchcase(name, metric)]
    if not infos:
        return
    lo, hi = min(i.lower_bound for i in infos), max(i.upper_bound for i in infos)
    what = infos[0].name if len(infos) == 1 else f"the metrics {metric!r} names"
    span = f"{_num(lo)}..{_num(hi)}"
    for key in ("min", "max"):
        value = bounds[key]
        if value is not None and not lo <= value <= hi:
            scale = (f" (a percentage? write {_num(value / 100)} for {_num(value)}%)"
                     if hi == 1 and 1 < value <= 100 else "")
            raise ConfigError(f"{origin}: {key} = {_num(value)} is outside the range {span} of {what}, so the rule "
                              f"is {'never' if (key == 'min') == (value > hi) else 'always'} met; "
                              f"give a bound within {span}{scale}")
    width = max(i.upper_bound - i.lower_bound for i in infos)
    drop = bounds["max_drop"]
    if drop is not None and math.isfinite(width) and drop >= width:
        scale = f" (a percentage? write {_num(drop / 100)} for {_num(drop)} points)" if width <= 2 and drop > 1 else ""
        raise ConfigError(f"{origin}: max_drop = {_num(drop)} is not below the whole range {span} of {what}, so no "
                          f"drop can exceed it; give a tolerance in metric units below {_num(width)}{scale}")


def _num(x: float) -> str:
    return f"{x:g}"


def _check_rule_names(prop: str, metric: str, origin: str) -> None:
    """A property or metric glob that names nothing known is a typo (the rule would never apply).
    The registry does not say which property records which metric; the end-of-run rule audit
    (clip_robustness.plugins.gates.audit) reports a metric that exists but is not recorded for the property."""
    import difflib

    from clip_robustness.plugins.metrics import METRICS
    from clip_robustness.plugins.properties import PROPERTIES

    for key, pattern, names in (("property", prop, PROPERTIES), ("metric", metric, METRICS)):
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            close = difflib.get_close_matches(pattern, names, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(names)}."
            raise ConfigError(f"{origin}: {key} {pattern!r} matches no known {key}; {hint}")


def load_thresholds_file(path: Path, origin: str | None = None) -> list[Threshold]:
    """A TOML or JSON file holding ``thresholds = [...]`` (TOML: ``[[thresholds]]`` tables); ``origin``
    names the rules' source in messages (default: the path)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--thresholds {path}: file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"--thresholds {path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {err}") from None
    if isinstance(data, dict) and "tool" in data:  # a pyproject.toml given directly
        data = data.get("tool", {}).get("robustness", {})
    rows = data.get("thresholds") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ConfigError(f"--thresholds {path}: expected a top-level 'thresholds' list ([[thresholds]] tables in TOML)")
    return [parse_threshold(row, f"{origin or path}[{i}]") for i, row in enumerate(rows)]


def load_pyproject(rootdir: Path) -> dict[str, Any]:
    """``[tool.robustness]`` of the rootdir's pyproject.toml (empty if absent); unknown keys are errors."""
    path = Path(rootdir) / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        section = tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}).get("robustness", {})
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [tool.robustness] must be a table of settings; got {_toml_type(section)}")
    unknown = set(section) - PYPROJECT_KEYS
    if unknown:
        raise ConfigError(f"{path} [tool.robustness]: unknown key(s) {sorted(unknown)}; allowed: {sorted(PYPROJECT_KEYS)}")
    check_pyproject_section(section, f"{path} [tool.robustness]")
    return section


# Each list key of [tool.robustness], with an example and what leaving it out means.
PYPROJECT_LISTS = {
    "models": ('models = ["embedded:rn-clip"]', "the embedded zoo's factor models"),
    "templates": ('templates = ["openai", "single"]', "the default template sets (openai and single)"),
    "lmms": ('lmms = ["embedded"]', "the embedded LMMs on the run's models"),
}


def _toml_type(value: Any) -> str:
    """``a string``, ``an integer``, ... for messages about a TOML value of the wrong type."""
    kinds = ((bool, "a boolean"), (str, "a string"), (int, "an integer"), (float, "a number"), (dict, "a table"),
             (list, "a list"))
    return next((name for kind, name in kinds if isinstance(value, kind)), f"a {type(value).__name__}")


def check_pyproject_section(section: dict[str, Any], where: str) -> None:
    """Type-check every key of ``[tool.robustness]``: a string where a list belongs would otherwise be read
    one character at a time, and ``strict = "false"`` would be true."""
    for key, (example, default) in PYPROJECT_LISTS.items():
        if key not in section:
            continue
        value = section[key]
        if not isinstance(value, list):
            raise ConfigError(f"{where} {key} must be a list of strings, e.g. {example}; got {_toml_type(value)}")
        bad = next((v for v in value if not isinstance(v, str) or not v.strip()), None)
        if bad is not None:
            raise ConfigError(f"{where} {key} must be a list of non-empty strings, e.g. {example}; "
                              f"got {bad!r} ({_toml_type(bad)}) in it")
        if not value:
            noun = {"models": "model", "templates": "template set", "lmms": "LMM"}[key]
            raise ConfigError(f"{where} {key} = [] selects no {noun}; "
                              f"remove the key for {default}, or list them, e.g. {example}")
    if "strict" in section and not isinstance(section["strict"], bool):
        raise ConfigError(f"{where} strict must be true or false (a TOML boolean, without quotes); "
                          f"got {_toml_type(section['strict'])} {section['strict']!r}")
    rules = section.get("thresholds", [])
    if not isinstance(rules, list):
        raise ConfigError(f"{where} thresholds must be a list of tables, one [[tool.robustness.thresholds]] block "
                          f"per rule; got {_toml_type(rules)}")


def parse_data_option(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> (name, path)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ConfigError(
            f"--data {text!r}: expected NAME=PATH, e.g. --data imagenet=/datasets/imagenet/val "
            "or --data ood:textures=/datasets/dtd/images"
        )
    if not DATA_NAME.match(name):
        raise ConfigError(f"--data {text!r}: dataset name {name!r} may hold letters, digits and . : _ + - only")
    return name, Path(path).expanduser()


@dataclass(frozen=True)
class RunConfig:
    models: tuple[ModelSpec, ...]  # what --model (or [tool.robustness].models, or the zoo) resolved to
    data: dict[str, Path] = field(default_factory=dict)  # --data NAME=PATH
    data_options: dict[str, dict[str, Path]] = field(default_factory=dict)  # imagefolder: classnames/templates files
    thresholds: tuple[Threshold, ...] = ()  # pyproject rules, then --thresholds rules
    thresholds_file: Path | None = None  # --thresholds FILE (its rules are among `thresholds`)
    baseline: Path | None = None  # --baseline robustness.json of an earlier run
    report_dir: Path = Path("reports")  # where robustness.json / .html / samples/ go
    limit: int | None = None  # cap on items per dataset, for quick runs
    seed: int = DEFAULT_SEED  # global seed; each test derives its own from it and its node id
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    strict: bool = False  # inconclusive gates fail the run
    templates: tuple[str, ...] = ("openai", "single")  # template sets for the prompt factor
    cache_dir: Path | None = None  # embedding cache location; None disables it
    baseline_models: dict[str, str] = field(default_factory=dict)  # run model id -> baseline model id
    lmms: tuple[str, ...] = ()  # --lmm specs (clip_robustness.fixtures.lmm.adapter); empty: the embedded LMMs on the run's models
    threads: int | None = None  # --threads N for torch's CPU pool; None: auto (choose_threads)
    precision: str = "auto"  # auto | fp32 | fp16 | bf16 (clip_robustness.fixtures.models.resolve_precision); part of cache keys
    batch_size: int = 256  # images per forward call (results equal within SAMPLES_TOLERANCE on CPU fp32)
    shard: tuple[int, int] | None = None  # --shard I/N: this run measures shard I of N (select_shard)
    baseline_run_id: str | None = None  # the --baseline report's run.run_id (None without a baseline, or not recorded)
    baseline_sha256: str | None = None  # sha256 of the --baseline file's bytes: which contents were compared with

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["models"] = [m.raw or m.id for m in self.models]
        out["data"] = {k: str(v) for k, v in self.data.items()}
        out["data_options"] = {k: {o: str(f) for o, f in v.items()} for k, v in self.data_options.items()}
        out["baseline_models"] = dict(self.baseline_models)
        out["thresholds"] = [asdict(t) for t in self.thresholds]
        out["template_files"] = template_file_digests(self.templates)
        for key in ("baseline", "report_dir", "cache_dir", "thresholds_file"):
            out[key] = None if out[key] is None else str(out[key])
        return out


def template_file_digests(templates: Sequence[str]) -> dict[str, str]:
    """``--templates`` value -> sha256 of the file, for each template set given as a file: its cells are named
    ``templates=VALUE``, so a baseline's cells under one name may have measured other prompts."""
    import hashlib

    return {t: hashlib.sha256(Path(t).read_bytes()).hexdigest() for t in templates if Path(t).is_file()}


def default_model_specs() -> tuple[ModelSpec, ...]:
    """The embedded zoo's factor models, default model first (demonstration models run only by name)."""
    from clip_robustness.fixtures import zoo

    try:
        entries = sorted(zoo.factor_models(), key=lambda e: (not e.default, e.name))
    except (OSError, ValueError) as err:
        raise ConfigError(f"no --model given and the embedded zoo cannot be read: {err}") from None
    if not entries:
        raise ConfigError("no --model given and the embedded zoo is empty; pass --model SPEC")
    return tuple(parse_model_spec(f"embedded:{e.name}") for e in entries)


def build_config(*, models: list[str], data: list[str], thresholds: str | None, baseline: str | None,
                 report_dir: str, limit: int | None, seed: int, device: str, strict: bool,
                 templates: list[str], cache_dir: Path | None, rootdir: Path,
                 baseline_models: list[str] | None = None, lmms: list[str] | None = None,
                 threads: str = "auto", precision: str = "auto", batch_size: int = 256,
                 shard: str | None = None) -> RunConfig:
    """Merge the three layers and validate every value."""
    project = load_pyproject(rootdir)
    if not str(report_dir).strip():
        raise ConfigError("--report-dir is empty; pass the folder for the report, e.g. --report-dir=reports "
                          "(the default)")
    try:
        specs = tuple(parse_model_spec(m) for m in (models or project.get("models", [])))
    except ModelSpecError as err:
        raise ConfigError(str(err)) from None
    if not specs:
        specs = default_model_specs()
    ids = [s.id for s in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--model: the same model is given twice: {sorted({i for i in ids if ids.count(i) > 1})}")
    from clip_robustness.fixtures.datasets import DatasetError
    from clip_robustness.fixtures.real_data import IMAGEFOLDER_PREFIX, check_data_layout, check_data_name, imagefolder_options

    data_map: dict[str, Path] = {}
    data_options: dict[str, dict[str, Path]] = {}
    for item in data:
        name, path = parse_data_option(item)
        if name in data_map:
            raise ConfigError(f"--data {name}=... given twice")
        try:
            check_data_name(name)  # a typo would otherwise skip every real-data test without a word
            if name.startswith(IMAGEFOLDER_PREFIX):
                path, data_options[name] = imagefolder_options(name, item.partition("=")[2])
        except DatasetError as err:
            raise ConfigError(str(err)) from None
        if not path.exists():
            raise ConfigError(f"--data {name}={path}: path does not exist")
        try:
            check_data_layout(name, path)
        except DatasetError as err:
            raise ConfigError(str(err)) from None
        data_map[name] = path
    rules = load_thresholds_file(DEFAULT_THRESHOLDS, origin="the package defaults")
    rules += [parse_threshold(r, f"pyproject.toml [tool.robustness] thresholds[{i}]")
              for i, r in enumerate(project.get("thresholds", []))]
    if thresholds:
        rules += load_thresholds_file(Path(thresholds))
    base, baseline_identity = None, (None, None)
    if baseline:
        base = Path(baseline)
        _check_baseline(base)
        baseline_identity = _baseline_identity(base)
    model_map = _baseline_model_map(baseline_models or [], specs, base)
    if base is not None:
        lacking, known = models_without_baseline(specs, model_map, base)
        if len(lacking) == len(specs):  # every regression gate would compare nothing
            raise ConfigError(f"--baseline {base} holds models [{', '.join(known)}]; none of this run's models "
                              f"[{', '.join(lacking)}] is among them; pass --baseline-model "
                              f"{lacking[0]}={known[0] if known else 'BASELINE_MODEL'}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: must be a positive number of samples per dataset")
    if not re.fullmatch(r"cpu|cuda|cuda:\d+|auto", device):
        raise ConfigError(f"--device {device!r}: use cpu, cuda, cuda:N or auto")
    if device.startswith("cuda"):
        _check_cuda(device)
    from clip_robustness.fixtures.pipeline import decode_workers

    try:
        decode_workers(device)  # a bad ROBUSTNESS_DECODE_WORKERS stops the run here, not at the first embedding
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not 0 <= seed < 2**32:
        raise ConfigError(f"--seed {seed}: must be an integer from 0 to 2**32-1 (4294967295)")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: use {', '.join(PRECISIONS)} "
                          "(auto: fp32 on cpu, autocast on cuda)")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be a positive number of images per forward call")
    from clip_robustness.fixtures.templates import check_templates

    template_sets = tuple(templates or project.get("templates", []) or RunConfig.templates)
    option = "--templates" if templates else "[tool.robustness] templates"
    names: dict[str, str] = {}  # the name a set's cells carry (templates=NAME) -> the value that gave it
    for t in template_sets:
        try:
            checked = check_templates(t)
        except ValueError as err:
            raise ConfigError(f"{option}: {err}") from None
        name = t if checked is None else checked[0]
        if name in names:  # every cell of the prompt factor would be measured and reported twice
            raise ConfigError(
                f"{option}: the same template set is given twice: {t!r}; give each set once"
                if names[name] == t else
                f"{option}: {names[name]!r} and {t!r} both name their cells {name!r}; rename one of the files")
        names[name] = t
    lmm_specs = tuple(lmms or project.get("lmms", []))
    if lmm_specs:
        from clip_robustness.fixtures.lmm.adapter import LMMError, parse_lmm_spec

        try:
            parsed = [parse_lmm_spec(x) for x in lmm_specs]
        except LMMError as err:
            raise ConfigError(str(err)) from None
        lmm_ids = [x.id for x in parsed]
        if len(set(lmm_ids)) != len(lmm_ids):
            raise ConfigError(f"--lmm: the same LMM is given twice: {sorted({i for i in lmm_ids if lmm_ids.count(i) > 1})}")
    return RunConfig(
        models=specs, data=data_map, data_options=data_options, thresholds=tuple(rules), baseline=base, report_dir=Path(report_dir),
        thresholds_file=Path(thresholds) if thresholds else None,
        limit=limit, seed=seed, device=device, strict=strict or bool(project.get("strict", False)),
        templates=template_sets, cache_dir=cache_dir, baseline_models=model_map, lmms=lmm_specs,
        threads=parse_threads(threads), precision=precision, batch_size=batch_size, shard=parse_shard(shard),
        baseline_run_id=baseline_identity[0], baseline_sha256=baseline_identity[1],
    )


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def parse_embedding_cache(value: str | None, default: Any) -> Path | None:
    """``--embedding-cache DIR|off`` -> the cache folder, or None when it is off (``off`` in any case);
    ``default()`` gives the folder when the option is not given. An empty value is refused, not read as
    the default or as the current folder."""
    if value is None:
        return Path(default())
    if not value.strip():
        raise ConfigError("--embedding-cache is empty; pass a folder, or off to disable the cache "
                          "(leave the option out for .pytest_cache/d/rb-embeddings)")
    if value.strip().lower() == "off":
        return None
    return Path(value).expanduser().resolve()


def parse_threads(text: str) -> int | None:
    """``--threads N|auto`` -> N, or None for auto."""
    if str(text) == "auto":
        return None
    if not str(text).isdigit() or int(text) < 1:
        raise ConfigError(f"--threads {text!r}: use a positive number of torch CPU threads, or auto")
    return int(text)


def choose_threads(threads: int | None, *, workers: int, cores: int, load: float,
                   env: dict[str, str]) -> tuple[int, str]:
    """torch CPU threads per process and why: --threads N, else an explicit OMP_NUM_THREADS, else auto.

    Auto: each of the ``workers`` processes gets its share of the cores that are not already busy
    (``load``: the 1-minute load average before the run starts, rounded). An intra-op thread that shares
    a core with another busy process stalls every parallel op: with one busy process on 2 cores the forward
    takes 2.8x as long with 2 threads and is unchanged with 1, so a busy 2-core machine gets 1 thread.
    """
    if threads is not None:
        return threads, "--threads"
    omp = env.get("OMP_NUM_THREADS", "")
    if omp:
        if not omp.isdigit() or int(omp) < 1:
            raise ConfigError(f"OMP_NUM_THREADS={omp!r}: must be a positive integer; unset it or pass --threads N")
        return int(omp), "OMP_NUM_THREADS"
    free = max(1, cores - round(max(load, 0.0)))
    count = max(1, min(cores, free) // max(workers, 1))
    return count, f"auto: {cores} cores, {free} free (load {load:.1f}), {workers} process(es)"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``--shard I/N`` -> (I, N), 1 <= I <= N."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ConfigError(f"--shard {text!r}: use I/N with 1 <= I <= N, one job per I "
                          "(e.g. --shard 1/4 ... --shard 4/4)")
    return int(match[1]), int(match[2])


def _check_cuda(device: str) -> None:
    """Fail at start, not after the first model loads. torch is imported only for a cuda spec, so
    ``pytest --help`` and cpu runs stay light."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu (or auto)")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); pick one of them")


def _baseline_model_map(items: list[str], specs: tuple[ModelSpec, ...], baseline: Path | None) -> dict[str, str]:
    """``--baseline-model [MODEL=]BASELINE`` -> {run model id: baseline model id}."""
    if items and baseline is None:
        raise ConfigError("--baseline-model needs --baseline PATH (the report that holds that model)")
    mapping: dict[str, str] = {}
    ids = [s.id for s in specs]
    for item in items:
        model, sep, base = item.rpartition("=") if "=" in item else ("", "", item)
        if not sep:
            if len(ids) != 1:
                raise ConfigError(f"--baseline-model {item!r}: the run has {len(ids)} models; "
                                  "say which one it is for: --baseline-model MODEL=BASELINE_MODEL")
            model = ids[0]
        if model not in ids:
            raise ConfigError(f"--baseline-model {item!r}: {model!r} is not a model of this run ({', '.join(ids)})")
        mapping[model] = base
    if baseline is not None:
        known = {r.model for r in load_baseline(baseline).rows}
        missing = sorted(set(mapping.values()) - known)
        if missing:
            raise ConfigError(f"--baseline-model: {missing} not found in {baseline}; it has {sorted(known)}")
    return mapping


def models_without_baseline(specs: tuple[ModelSpec, ...], model_map: dict[str, str],
                            baseline: Path) -> tuple[list[str], list[str]]:
    """(run models with no counterpart in the baseline: neither their id nor their --baseline-model
    is among its models, the baseline's models)."""
    known = sorted({r.model for r in load_baseline(baseline).rows})
    return [s.id for s in specs if model_map.get(s.id, s.id) not in known], known


def load_baseline(path: Path) -> Any:
    """The ``--baseline`` report (clip_robustness.plugins.rows.Report), checked as every report reader checks it;
    read once per file state (the start-up checks, the comparisons and the audit all read it)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as err:
        raise ConfigError(f"--baseline {path}: cannot read it ({err})") from None
    return _read_baseline(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_baseline(path: str, _size: int, _mtime_ns: int) -> Any:
    from clip_robustness.plugins.rows import ReportError, load_report

    try:
        return load_report(path)
    except ReportError as err:
        raise ConfigError(f"--baseline {err}") from None


def _check_baseline(path: Path) -> None:
    """Refuse at start a baseline that cannot be compared with cell by cell: no file, no samples/ folder for
    its per-sample files, a samples/ folder another run wrote, a cell given twice."""
    if not path.is_file():
        raise ConfigError(f"--baseline {path}: file not found (pass the robustness.json of an earlier run)")
    report = load_baseline(path)
    from clip_robustness.plugins.rows import row_key

    seen: set[tuple[str, ...]] = set()
    for row in report.rows:
        key = row_key(row)
        if key in seen:
            raise ConfigError(f"--baseline {path}: the cell {row.metric} of {row.model} on {row.dataset} "
                              f"({row.property}{', ' + row.condition if row.condition else ''}) is given by two rows; "
                              "a report holds each cell once, so keep the one that was measured and remove the other")
        seen.add(key)
    sampled = next((r.samples for r in report.rows if r.samples), None)
    if sampled and not (path.parent / sampled).parent.is_dir():
        raise ConfigError(f"--baseline {path}: its rows reference per-sample files ({sampled}) but "
                          f"{(path.parent / sampled).parent} is missing; copy the baseline report's samples/ folder "
                          f"next to {path.name}")
    run_id = report.run.get("run_id")
    marker = (path.parent / sampled).parent / "RUN_ID" if sampled else None  # written by the report (RUN_ID_FILE)
    if marker is not None and isinstance(run_id, str) and "shards" not in report.run and marker.is_file():
        try:
            written = marker.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            written = ""
        if written != run_id:
            raise ConfigError(f"--baseline {path}: its samples/ folder was written by run {written or '(unreadable)'} "
                              f"(samples/RUN_ID), not by the report's run {run_id}; copy the samples/ folder that "
                              f"was written with {path.name}")


def _baseline_identity(path: Path) -> tuple[str | None, str]:
    """(the baseline's run.run_id, the sha256 of its bytes), recorded in run.config so that shards compared
    with different baseline contents under one path can be told apart."""
    import hashlib

    run_id = load_baseline(path).run.get("run_id")
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        raise ConfigError(f"--baseline {path}: cannot read it ({err})") from None
    return (run_id if isinstance(run_id, str) else None), digest
