"""Spec parsing and configuration validation (no pytest plumbing: plain function calls)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from fixtures.models import ModelSpecError, parse_model_spec
from plugins.config import ConfigError, Threshold, build_config, load_thresholds_file, parse_data_option


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
    assert cfg.templates == ("single",) and cfg.thresholds[0].min == 0.5
    cli = tmp_path / "cli.toml"
    cli.write_text('[[thresholds]]\nproperty="accuracy"\nmetric="top1"\nmin=0.7\n')
    cfg = _build(tmp_path, thresholds=str(cli), templates=["openai"])
    assert cfg.templates == ("openai",) and [t.min for t in cfg.thresholds] == [0.5, 0.7]
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


def test_threshold_is_frozen_and_hashable():
    assert hash(Threshold("ood", "auroc", min=0.9)) == hash(Threshold("ood", "auroc", min=0.9))
