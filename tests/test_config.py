"""Spec parsing and configuration validation (no pytest plumbing: plain function calls)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from clip_robustness.fixtures.models import ModelSpecError, parse_model_spec
from clip_robustness.plugins.config import ConfigError, Threshold, build_config, load_thresholds_file, parse_data_option


@pytest.mark.parametrize("text, kind, arch, source, spec_id", [
    ("ViT-B-32:laion2b_s34b_b79k", "tag", "ViT-B-32", "laion2b_s34b_b79k", "ViT-B-32:laion2b_s34b_b79k"),
    ("ViT-B-32@runs/ft/epoch_10.pt", "path", "ViT-B-32", "runs/ft/epoch_10.pt", "ViT-B-32@runs/ft/epoch_10.pt"),
    ("hf-hub:timm/ViT-B-16-SigLIP", "hf-hub", "", "timm/ViT-B-16-SigLIP", "hf-hub:timm/ViT-B-16-SigLIP"),
    ("embedded:rn-clip", "embedded", "", "rn-clip", "embedded:rn-clip"),
    ("world-rn-tiny:random", "random", "world-rn-tiny", "random", "world-rn-tiny:random"),
    ("C:@D:/w.pt", "path", "C:", "D:/w.pt", "C:@D:/w.pt"),  # '@' wins over ':' (Windows-style paths)
])
def test_spec_forms(text, kind, arch, source, spec_id):
    spec = parse_model_spec(text)
    assert (spec.kind, spec.arch, spec.source, spec.id) == (kind, arch, source, spec_id)


def test_spec_metadata():
    spec = parse_model_spec("ViT-B-32@ft.pt; finetune = ft-imagenet ;data=laion2b;")
    assert spec.meta == {"finetune": "ft-imagenet", "data": "laion2b"}
    assert spec.id == "ViT-B-32@ft.pt"


@pytest.mark.parametrize("text, fragment", [
    ("", "empty spec"), ("ViT-B-32", "no ':' or '@'"), (":tag", "needs both"), ("arch@", "needs both"),
    ("hf-hub:noslash", "is not ORG/NAME"), ("embedded:", "missing zoo model name"),
    ("RN50:openai;notkv", "is not key=value"),
])
def test_spec_errors_name_the_spec_and_forms(text, fragment):
    with pytest.raises(ModelSpecError) as err:
        parse_model_spec(text)
    assert fragment in str(err.value) and repr(text) in str(err.value)


@given(st.text(alphabet=st.characters(codec="ascii", exclude_characters=";@:\n\r"), min_size=1, max_size=20),
       st.text(alphabet=st.characters(codec="ascii", exclude_characters=";@\n\r"), min_size=1, max_size=20))
def test_tag_spec_round_trips(arch, tag):
    arch, tag = arch.strip() or "a", tag.strip() or "t"
    spec = parse_model_spec(f"{arch}:{tag}")
    assert parse_model_spec(spec.id) == parse_model_spec(f"{arch}:{tag}")


def test_data_option():
    assert parse_data_option("ood:textures=/d/dtd") == ("ood:textures", __import__("pathlib").Path("/d/dtd"))
    for bad in ("imagenet", "=x", "bad name=/x"):
        with pytest.raises(ConfigError):
            parse_data_option(bad)


def test_thresholds_toml_and_json(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text('[[thresholds]]\nproperty="ood"\nmetric="auroc"\nmodel="embedded:*"\nmin=0.9\n')
    js = tmp_path / "t.json"
    js.write_text(json.dumps({"thresholds": [{"property": "calibration", "metric": "ece", "max": 0.05}]}))
    (rule,) = load_thresholds_file(toml)
    assert rule.min == 0.9 and rule.matches({"property": "ood", "metric": "auroc", "model": "embedded:rn-clip",
                                             "dataset": "world:test", "condition": "score=mcm"})
    assert not rule.matches({"property": "ood", "metric": "auroc", "model": "RN50:openai", "dataset": "x",
                             "condition": ""})
    assert load_thresholds_file(js)[0].max == 0.05


@pytest.mark.parametrize("body, fragment", [
    ('[[thresholds]]\nproperty="ood"\nmetric="auroc"\n', "needs at least one of min, max, max_drop"),
    ('[[thresholds]]\nproperty="ood"\nmetric="auroc"\nmin="high"\n', "min='high' must be a number"),
    ('[[thresholds]]\nmetric="auroc"\nmin=0.9\n', "needs a 'property' string"),
    ('thresholds = 3\n', "expected a top-level 'thresholds' list"),
    ('[[thresholds]\n', "not valid TOML"),
])
def test_malformed_thresholds(tmp_path, body, fragment):
    path = tmp_path / "t.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=None) as err:
        load_thresholds_file(path)
    assert fragment in str(err.value)


def _build(tmp_path, **overrides):
    args = dict(models=["world-rn-tiny:random"], data=[], thresholds=None, baseline=None, report_dir="reports",
                limit=None, seed=0, device="cpu", strict=False, templates=[], cache_dir=None, rootdir=tmp_path)
    args.update(overrides)
    return build_config(**args)


def test_pyproject_section_is_validated_and_merged(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.robustness]\ntemplates=["single"]\n[[tool.robustness.thresholds]]\nproperty="accuracy"\n'
        'metric="top1"\nmin=0.5\n')
    cfg = _build(tmp_path)
    assert cfg.templates == ("single",) and cfg.thresholds[-1].min == 0.5  # after the package defaults
    cli = tmp_path / "cli.toml"
    cli.write_text('[[thresholds]]\nproperty="accuracy"\nmetric="top1"\nmin=0.7\n')
    cfg = _build(tmp_path, thresholds=str(cli), templates=["openai"])
    own = [t.min for t in cfg.thresholds if not t.origin.startswith("the package defaults")]
    assert cfg.templates == ("openai",) and own == [0.5, 0.7]
    (tmp_path / "pyproject.toml").write_text('[tool.robustness]\nthreshold=[]\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['threshold'\]"):
        _build(tmp_path)


def test_duplicate_models_and_baseline_validation(tmp_path):
    with pytest.raises(ConfigError, match="given twice"):
        _build(tmp_path, models=["world-rn-tiny:random", "world-rn-tiny:random"])
    bad = tmp_path / "b.json"
    bad.write_text('{"results": 1}')
    with pytest.raises(ConfigError, match="not a robustness.json report"):
        _build(tmp_path, baseline=str(bad))


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_out_of_range_is_a_usage_error(tmp_path, seed):
    with pytest.raises(ConfigError, match=rf"--seed {seed}: must be an integer from 0 to 2\*\*32-1"):
        _build(tmp_path, seed=seed)
    assert _build(tmp_path, seed=2**32 - 1).seed == 2**32 - 1


def test_bad_decode_worker_count_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTNESS_DECODE_WORKERS", "two")
    with pytest.raises(ConfigError, match=r"ROBUSTNESS_DECODE_WORKERS='two' is not a whole number"):
        _build(tmp_path)
    monkeypatch.setenv("ROBUSTNESS_DECODE_WORKERS", "2")
    assert _build(tmp_path).device == "cpu"


@pytest.mark.parametrize("device, count, fragment", [
    ("cuda", 0, "--device cuda: CUDA is not available on this machine; use --device cpu"),
    ("cuda:1", 0, "--device cuda:1: CUDA is not available"),
    ("cuda:2", 2, "--device cuda:2: this machine has 2 CUDA device(s) (cuda:0..cuda:1)"),
])
def test_cuda_device_is_checked_at_start(tmp_path, monkeypatch, device, count, fragment):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, device=device)
    assert fragment in str(err.value)
    assert _build(tmp_path, device="cpu").device == "cpu"


def test_threshold_is_frozen_and_hashable():
    assert hash(Threshold("ood", "auroc", min=0.9)) == hash(Threshold("ood", "auroc", min=0.9))


@pytest.mark.parametrize("rule, fragment", [
    ('property="acuracy"\nmetric="top1"', "property 'acuracy' matches no known property; did you mean 'accuracy'?"),
    ('property="accuracy"\nmetric="top_1"', "metric 'top_1' matches no known metric; did you mean 'top1'?"),
    ('property="ood"\nmetric="aur*c_x"', "metric 'aur*c_x' matches no known metric"),
    ('property="corruption*"\nmetric="relative_top*"', None),  # globs that name something are fine
])
def test_threshold_names_are_checked_when_read(tmp_path, rule, fragment):
    """Case 2 (a): a rule whose property or metric names nothing known would never apply."""
    path = tmp_path / "t.toml"
    path.write_text(f"[[thresholds]]\n{rule}\nmin=0.5\n")
    if fragment is None:
        assert load_thresholds_file(path)[0].min == 0.5
        return
    with pytest.raises(ConfigError) as err:
        load_thresholds_file(path)
    assert str(err.value).startswith(f"{path}[0]: ") and fragment in str(err.value)


def _baseline(tmp_path, rows, samples_dir=False):
    path = tmp_path / "base.json"
    path.write_text(json.dumps({"run": {}, "results": rows}))
    if samples_dir:
        (tmp_path / "samples").mkdir()
    return str(path)


BASE_ROW = {"property": "accuracy", "model": "world-rn-tiny:random", "dataset": "world:test", "condition": "",
            "metric": "top1", "value": 0.5, "samples": None}


@pytest.mark.parametrize("rows, fragment", [
    ([BASE_ROW, {k: v for k, v in BASE_ROW.items() if k != "property"}],
     "results[1] lacks the field 'property' (every row needs property, model, dataset, condition, metric, value); "
     "pass a robustness.json written by this harness"),
    ([[1, 2]], "results[0] lacks the field 'property'"),
    ([{**BASE_ROW, "samples": "samples/abc.npz"}],
     "its rows reference per-sample files (samples/abc.npz) but"),
])
def test_baseline_rows_and_samples_are_checked_at_start(tmp_path, rows, fragment):
    """Case 15: a baseline missing fields or its samples/ folder is one sentence at start, not a KeyError later."""
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, baseline=_baseline(tmp_path, rows))
    assert fragment in str(err.value) and "base.json" in str(err.value)


def test_baseline_with_samples_folder_is_accepted(tmp_path):
    rows = [{**BASE_ROW, "samples": "samples/abc.npz"}]
    assert _build(tmp_path, baseline=_baseline(tmp_path, rows, samples_dir=True)).baseline is not None


def test_baseline_without_any_run_model_is_a_usage_error(tmp_path):
    """Case 3: a baseline of other models would compare nothing; a mapping makes it usable."""
    path = _baseline(tmp_path, [{**BASE_ROW, "model": "a"}, {**BASE_ROW, "model": "b"}])
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, baseline=path)
    assert str(err.value) == (f"--baseline {path} holds models [a, b]; none of this run's models "
                              "[world-rn-tiny:random] is among them; pass --baseline-model world-rn-tiny:random=a")
    assert _build(tmp_path, baseline=path, baseline_models=["a"]).baseline_models == {"world-rn-tiny:random": "a"}
    # only some models lacking one: allowed (the header warns)
    two = _build(tmp_path, baseline=_baseline(tmp_path, [BASE_ROW]),
                 models=["world-rn-tiny:random", "world-vit-tiny:random"])
    from clip_robustness.plugins.config import models_without_baseline

    assert models_without_baseline(two.models, two.baseline_models, two.baseline)[0] == ["world-vit-tiny:random"]


def test_data_names_and_imagefolder_options_are_checked_at_start(tmp_path):
    """Issue 13 case 4: an unknown --data name is a usage error with a suggestion; imagefolder options parsed."""
    from PIL import Image

    def build(*data):
        return build_config(models=["embedded:rn-clip"], data=list(data), thresholds=None, baseline=None,
                            report_dir="r", limit=None, seed=0, device="cpu", strict=False, templates=[],
                            cache_dir=None, rootdir=tmp_path)

    with pytest.raises(ConfigError, match=r"--data imagenett=\.\.\.: unknown dataset name; did you mean 'imagenet'\?"):
        build(f"imagenett={tmp_path}")
    for animal in ("cat", "dog"):  # a one-class set is refused at start
        (tmp_path / "d" / animal).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "d" / animal / "a.png")
    (tmp_path / "t.txt").write_text("a {c}.\n")
    config = build(f"imagefolder:pets={tmp_path / 'd'};templates={tmp_path / 't.txt'}")
    assert config.data == {"imagefolder:pets": tmp_path / "d"}
    assert config.data_options == {"imagefolder:pets": {"templates": tmp_path / "t.txt"}}
    assert config.to_json()["data_options"] == {"imagefolder:pets": {"templates": str(tmp_path / "t.txt")}}


def _pyproject(tmp_path, body):
    (tmp_path / "pyproject.toml").write_text(f"[tool.robustness]\n{body}\n")
    return f"{tmp_path / 'pyproject.toml'} [tool.robustness]"


@pytest.mark.parametrize("body, sentence", [
    ('models = "embedded:rn-clip"',
     'models must be a list of strings, e.g. models = ["embedded:rn-clip"]; got a string'),
    ('templates = "single"',
     'templates must be a list of strings, e.g. templates = ["openai", "single"]; got a string'),
    ('lmms = "embedded"', 'lmms must be a list of strings, e.g. lmms = ["embedded"]; got a string'),
    ('models = [1, 2]',
     'models must be a list of non-empty strings, e.g. models = ["embedded:rn-clip"]; got 1 (an integer) in it'),
    ('templates = [1]', "templates must be a list of non-empty strings, e.g. templates = "
                        '["openai", "single"]; got 1 (an integer) in it'),
    ('models = []', "models = [] selects no model; remove the key for the embedded zoo's factor models, "
                    'or list them, e.g. models = ["embedded:rn-clip"]'),
    ('templates = []', "templates = [] selects no template set; remove the key for the default template sets "
                       '(openai and single), or list them, e.g. templates = ["openai", "single"]'),
    ('lmms = []', "lmms = [] selects no LMM; remove the key for the embedded LMMs on the run's models, or list "
                  'them, e.g. lmms = ["embedded"]'),
    ('strict = "false"', "strict must be true or false (a TOML boolean, without quotes); got a string 'false'"),
    ('strict = 1', "strict must be true or false (a TOML boolean, without quotes); got an integer 1"),
    ('thresholds = {property="accuracy"}', "thresholds must be a list of tables, one [[tool.robustness.thresholds]] "
                                           "block per rule; got a table"),
    ('thresholds = ["accuracy"]', "pyproject.toml [tool.robustness] thresholds[0]: each threshold must be a "
                                  "table/object (property, metric and a bound), got a string 'accuracy'"),
    ('model = ["embedded:rn-clip"]', "unknown key(s) ['model']; allowed: ['lmms', 'models', 'strict', 'templates', "
                                     "'thresholds']"),
])
def test_pyproject_keys_are_type_checked(tmp_path, body, sentence):
    """QA 1: a string where a list belongs was read one character at a time, `strict = "false"` was true,
    `models = [1, 2]` and `templates = [1]` were tracebacks, `models = []` silently ran the whole zoo."""
    where = _pyproject(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, models=[])
    message = str(err.value)
    assert message.endswith(sentence) and (message.startswith(where) or "thresholds[0]" in sentence)
    assert "\n" not in message


def test_pyproject_values_of_the_right_type_are_read(tmp_path):
    _pyproject(tmp_path, 'models = ["world-rn-tiny:random"]\ntemplates = ["single"]\nstrict = false\n'
                         'lmms = ["embedded"]')
    cfg = _build(tmp_path, models=[])
    assert ([m.id for m in cfg.models], cfg.templates, cfg.strict, cfg.lmms) == (
        ["world-rn-tiny:random"], ("single",), False, ("embedded",))
    _pyproject(tmp_path, "strict = true")
    assert _build(tmp_path).strict is True


def _rule(tmp_path, body, metric="top1", prop="accuracy"):
    path = tmp_path / "t.toml"
    path.write_text(f'[[thresholds]]\nproperty="{prop}"\nmetric="{metric}"\n{body}\n')
    return path


@pytest.mark.parametrize("body, metric, sentence", [
    ("min = nan", "top1", "min = nan is not a finite number, so the rule can never be decided; give a number on "
                          "the metric's scale, e.g. min = 0.9"),
    ("max = inf", "top1", "max = inf is not a finite number"),
    ("max_drop = nan", "top1", "max_drop = nan is not a finite number, so the rule can never be decided; give a "
                               "number on the metric's scale, e.g. max_drop = 0.02"),
    ("min = 0.9\nmax = 0.5", "top1", "min = 0.9 is above max = 0.5, so no value can meet both; swap them or fix the "
                                     "one that is wrong"),
    ("min = 90", "top1", "min = 90 is outside the range 0..1 of top1, so the rule is never met; give a bound within "
                         "0..1 (a percentage? write 0.9 for 90%)"),
    ("max = -0.1", "ece", "max = -0.1 is outside the range 0..1 of ece, so the rule is never met; give a bound "
                          "within 0..1"),
    ("min = -2", "top1", "min = -2 is outside the range 0..1 of top1, so the rule is always met"),
    ("min = 1.5", "top*", "min = 1.5 is outside the range 0..1 of top1, so the rule is never met"),
    ("max_drop = 2", "top1", "max_drop = 2 is not below the whole range 0..1 of top1, so no drop can exceed it; "
                             "give a tolerance in metric units below 1 (a percentage? write 0.02 for 2 points)"),
    ("max_drop = 2", "lmm_gain", "max_drop = 2 is not below the whole range -1..1 of lmm_gain, so no drop can "
                                 "exceed it; give a tolerance in metric units below 2"),
])
def test_impossible_bounds_are_refused_when_read(tmp_path, body, metric, sentence):
    """QA 2: `min = nan` made every cell 'straddle the bound nan' (exit 0); min > max and a percent-scale bound
    on a 0..1 metric failed every cell."""
    path = _rule(tmp_path, body, metric=metric)
    with pytest.raises(ConfigError) as err:
        load_thresholds_file(path)
    assert str(err.value).startswith(f"{path}[0]: ") and sentence in str(err.value)


@pytest.mark.parametrize("body, metric", [
    ("min = 0.9\nmax = 0.9", "top1"), ("min = 0", "top1"), ("max = 1", "ece"), ("min = 1.5", "relative_top*"),
    ("min = 4.0", "*"), ("max_drop = 0.5", "top1"), ("max_drop = 50", "nll"), ("min = 0.9", "top1"),
])
def test_bounds_within_the_metric_range_are_accepted(tmp_path, body, metric):
    assert load_thresholds_file(_rule(tmp_path, body, metric=metric))


def test_the_package_defaults_pass_the_bound_checks():
    from clip_robustness.plugins.config import DEFAULT_THRESHOLDS

    assert load_thresholds_file(DEFAULT_THRESHOLDS)


@pytest.mark.parametrize("given, sentence", [
    (["openai", "openai"], "--templates: the same template set is given twice: 'openai'; give each set once"),
    (["single", "simple", "single"], "--templates: the same template set is given twice: 'single'"),
])
def test_repeated_template_set_is_refused(tmp_path, given, sentence):
    """QA 4: a repeated --templates measured and reported every prompt-factor cell twice."""
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, templates=given)
    assert str(err.value).startswith(sentence)


def test_two_template_files_of_one_name_are_refused(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "p.txt").write_text("a {c}.\n")
    a, b = str(tmp_path / "a" / "p.txt"), str(tmp_path / "b" / "p.txt")
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, templates=[a, b])
    assert str(err.value) == f"--templates: {a!r} and {b!r} both name their cells 'p'; rename one of the files"
    assert _build(tmp_path, templates=[a, "openai"]).templates == (a, "openai")


@pytest.mark.parametrize("value", ["/tmp/fixcfg-nosuch/p.txt", "prompts.txt", "cfg/prompts"])
def test_a_template_path_that_does_not_exist_says_so(tmp_path, value):
    """QA 6: `--templates=/tmp/nosuch.txt` said 'unknown template set'."""
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, templates=[value])
    assert str(err.value) == (f"--templates: template file {value!r} does not exist; pass an existing text file "
                              "with one template per line containing '{c}', or a set name: openai, simple, single")
    with pytest.raises(ConfigError, match="unknown template set 'opnai'"):
        _build(tmp_path, templates=["opnai"])


@pytest.mark.parametrize("value", ["", "  "])
def test_empty_report_dir_is_refused(tmp_path, value):
    """QA 5: `--report-dir=` wrote the report into the current folder."""
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, report_dir=value)
    assert str(err.value) == "--report-dir is empty; pass the folder for the report, e.g. --report-dir=reports " \
                             "(the default)"


def test_embedding_cache_option(tmp_path):
    """QA 5: `--embedding-cache=` silently used the default and `--embedding-cache=OFF` made a folder named OFF."""
    from clip_robustness.plugins.config import parse_embedding_cache

    default = tmp_path / "default"
    assert parse_embedding_cache(None, lambda: default) == default
    for off in ("off", "OFF", "Off", " off "):
        assert parse_embedding_cache(off, lambda: default) is None
    assert parse_embedding_cache(str(tmp_path / "c"), lambda: default) == tmp_path / "c"
    for empty in ("", " "):
        with pytest.raises(ConfigError) as err:
            parse_embedding_cache(empty, lambda: default)
        assert str(err.value) == ("--embedding-cache is empty; pass a folder, or off to disable the cache "
                                  "(leave the option out for .pytest_cache/d/rb-embeddings)")


def test_a_baseline_cell_given_twice_is_refused_at_start(tmp_path):
    """Reliability 38: two rows of one cell in a baseline (an edited or concatenated report): the last one
    silently won; now one sentence naming the cell."""
    rows = [BASE_ROW, {**BASE_ROW, "value": 0.9}, {**BASE_ROW, "metric": "ece", "value": 0.1}]
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, baseline=_baseline(tmp_path, rows))
    assert str(err.value) == (f"--baseline {tmp_path / 'base.json'}: the cell top1 of world-rn-tiny:random on "
                              "world:test (accuracy) is given by two rows; a report holds each cell once, so keep the "
                              "one that was measured and remove the other")


def test_a_baseline_samples_folder_of_another_run_is_refused_at_start(tmp_path):
    """Reliability 37: samples/RUN_ID names the run that wrote the folder; a samples/ folder copied from another
    run beside the baseline is refused (the folder of a merged report, which writes no RUN_ID of its own, is not)."""
    path = tmp_path / "base.json"
    rows = [{**BASE_ROW, "samples": "samples/abc.npz"}]
    path.write_text(json.dumps({"run": {"run_id": "20260101T000000Z-aaaaaa"}, "results": rows}))
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "RUN_ID").write_text("20260101T000000Z-aaaaaa\n")
    assert _build(tmp_path, baseline=str(path)).baseline == path
    (tmp_path / "samples" / "RUN_ID").write_text("20260202T000000Z-bbbbbb\n")
    with pytest.raises(ConfigError) as err:
        _build(tmp_path, baseline=str(path))
    assert str(err.value) == (f"--baseline {path}: its samples/ folder was written by run 20260202T000000Z-bbbbbb "
                              "(samples/RUN_ID), not by the report's run 20260101T000000Z-aaaaaa; copy the samples/ "
                              "folder that was written with base.json")
    path.write_text(json.dumps({"run": {"run_id": "20260101T000000Z-aaaaaa", "shards": []}, "results": rows}))
    assert _build(tmp_path, baseline=str(path)).baseline == path


def test_the_baseline_identity_is_recorded_in_run_config(tmp_path):
    """Reliability 41: run.config records the baseline's run_id and the sha256 of its bytes (a shard merge can
    refuse shards compared with different baseline contents under one path); the schema allows both."""
    import hashlib

    from clip_robustness.plugins.regression import baseline_warnings

    path = tmp_path / "base.json"
    path.write_text(json.dumps({"run": {"run_id": "20260101T000000Z-aaaaaa", "config": {"seed": 1, "limit": None}},
                                "results": [BASE_ROW]}))
    cfg = _build(tmp_path, baseline=str(path)).to_json()
    assert cfg["baseline_run_id"] == "20260101T000000Z-aaaaaa"
    assert cfg["baseline_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    none = _build(tmp_path).to_json()
    assert none["baseline_run_id"] is None and none["baseline_sha256"] is None
    schema = json.loads((Path(__file__).parents[1] / "plugins" / "robustness.schema.json").read_text())
    assert {"baseline_run_id", "baseline_sha256"} <= set(schema["$defs"]["run"]["properties"]["config"]["properties"])
    # a baseline run with another --seed: one start-up warning (clip_robustness.plugins.robustness's header)
    assert baseline_warnings(_build(tmp_path, baseline=str(path))) == [
        f"--baseline {path}: the baseline was run with --seed 1, this run with 0, so its items differ; no cell is "
        "paired with it, each is compared unpaired from the two rows' values and CIs (wider), so re-run the baseline "
        "with this run's options for paired tests"]
    assert baseline_warnings(_build(tmp_path, baseline=str(path), seed=1)) == []
