"""NaN and inf never become a number (issue 13, case 1): non-finite weights are refused at load, the one
guard on embeddings/heads/logits names model, tensor and dataset, the cache never serves NaN, and the
recorder records a non-finite metric as undefined (value null) with its reason."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clip_robustness.fixtures import zoo
from clip_robustness.fixtures.models import ModelLoadError, NonFiniteError, load_model, parse_model_spec

ARCH = zoo.get("rn-clip").arch


def _planted(tmp_path, **changes) -> str:
    """rn-clip's weights with ``changes`` (key -> fill value) saved as a safetensors ARCH@PATH spec."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(zoo.get("rn-clip").checkpoint))
    for key, fill in changes.items():
        state[key] = state[key].float().fill_(fill)  # the zoo stores float16
    path = tmp_path / "planted.safetensors"
    save_file(state, str(path))
    return f"{ARCH}@{path}"


@pytest.mark.parametrize("key, fill, named", [
    ("text_projection", math.nan, "text_projection"),
    ("visual.conv1.weight", math.inf, "visual.conv1.weight"),
    ("logit_scale", math.inf, "logit_scale"),
    ("logit_scale", 100.0, "logit_scale (its exp overflows: 100)"),
])
def test_non_finite_weights_are_refused_at_load(tmp_path, key, fill, named):
    spec = _planted(tmp_path, **{key: fill})
    with pytest.raises(ModelLoadError) as info:
        load_model(parse_model_spec(spec))
    assert str(info.value) == f"--model {spec!r}: the checkpoint holds non-finite weights in {named}; re-export " \
                              "it from a training step whose weights are finite"


@pytest.fixture(scope="module")
def rn_clip():
    return load_model(parse_model_spec("embedded:rn-clip"))


def test_guard_names_model_tensor_dataset_and_the_weights(rn_clip):
    import torch

    images = [np.zeros((32, 32, 3), np.uint8)] * 3
    weight = rn_clip.model.visual.conv1.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.fill_(math.nan)
        with pytest.raises(NonFiniteError) as info:
            rn_clip.encode_images(images, dataset="world:test")
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert str(info.value) == "model embedded:rn-clip produced non-finite image embeddings on world:test (3 of 3 " \
                              "rows hold NaN or inf): the model holds non-finite weights in visual.conv1.weight; " \
                              "re-export the checkpoint"


def test_guard_on_logits_and_overflow(rn_clip):
    emb = np.full((2, 4), np.float32(1e30))
    with pytest.raises(NonFiniteError, match=r"non-finite logits on world:test \(2 of 2 rows.*weights are finite, "
                                             r"so the values overflow during inference"):
        rn_clip.logits(emb, emb, dataset="world:test")


def test_cache_never_serves_a_non_finite_entry(tmp_path):
    from clip_robustness.fixtures.cache import CacheWarning, EmbeddingCache, cache_key

    cache = EmbeddingCache(tmp_path)
    parts = {"kind": "text", "texts": "x"}
    key = cache_key(parts)
    cache.path_for(key).parent.mkdir(parents=True)
    cache._write(cache.path_for(key), key, np.array([[np.nan, 1.0]], np.float32))  # a NaN entry from an old run
    with pytest.warns(CacheWarning, match="non-finite values"):
        value = EmbeddingCache(tmp_path).get_or_compute(parts, lambda: np.array([[0.0, 1.0]], np.float32))
    assert np.isfinite(value).all()


def _top1_rows(pytester):
    path = pytester.path / "reports" / "robustness.json"
    rows = json.loads(path.read_text())["results"] if path.exists() else []
    return [r for r in rows if r["metric"] == "top1" and r["value"] is not None]


def _accuracy_run(pytester, run_harness, spec):
    from pathlib import Path

    suite = Path(__file__).parents[1] / "robustness_tests" / "test_accuracy.py"
    pytester.makepyfile(test_accuracy=suite.read_text())
    return run_harness("--model", spec, "--limit", "20", "--templates", "single", "-k", "top1_world")


def test_nan_checkpoint_fails_accuracy_with_a_sentence(pytester, run_harness, tmp_path):
    spec = _planted(tmp_path, text_projection=math.nan)
    result = _accuracy_run(pytester, run_harness, spec)
    assert result.ret == 1 and "Traceback" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*the checkpoint holds non-finite weights in text_projection; re-export it*"])
    assert _top1_rows(pytester) == []


def test_overflowing_text_tower_fails_accuracy_with_a_sentence(pytester, run_harness, tmp_path):
    """Finite weights that overflow to inf in the text tower: caught by the output guard, not at load."""
    spec = _planted(tmp_path, text_projection=3e38)
    result = _accuracy_run(pytester, run_harness, spec)
    assert result.ret == 1 and "Traceback" not in result.stdout.str()
    result.stdout.fnmatch_lines([f"*model {spec} produced non-finite zero-shot head (class text embeddings) *"
                                 "rows hold NaN or inf): its weights are finite, so the values overflow*"])
    assert _top1_rows(pytester) == []


UNDEFINED_TESTS = '''
import warnings
import numpy as np
import pytest
from clip_robustness.plugins.metrics import UndefinedMetricWarning

def degenerate(x):
    warnings.warn("ece is undefined with one class", UndefinedMetricWarning)
    return float("nan")

@pytest.mark.calibration
def test_undefined(record):
    record.measure("ece", degenerate, np.arange(10.0), dataset="synthetic", model="m")

@pytest.mark.calibration
def test_infinite(record):
    record("nll", float("inf"), ci=(1.0, float("inf")), dataset="synthetic", model="m")

@pytest.mark.calibration
def test_finite_with_undefined_interval(record):
    record("brier", 0.2, ci=(float("nan"), float("nan")), dataset="synthetic", model="m")
'''


def test_non_finite_metric_is_recorded_as_undefined(pytester, run_harness):
    pytester.makepyfile(test_props=UNDEFINED_TESTS)
    pytester.makefile(".toml", gates='[[thresholds]]\nproperty = "calibration"\nmetric = "ece"\nmax = 0.05\n')
    result = run_harness("--model", "world-rn-tiny:random", "--thresholds", "gates.toml", "-W", "error::UserWarning")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*ece is undefined for m on synthetic (ece is undefined with one class), so the "
                                 "bound <= 0.05 cannot be met.*"])
    assert "Traceback" not in result.stdout.str()
    data = json.loads((pytester.path / "reports" / "robustness.json").read_text())
    rows = {r["metric"]: r for r in data["results"]}
    assert rows["ece"]["value"] is None and rows["ece"]["ci"] is None
    assert rows["ece"]["extra"]["undefined"] == "ece is undefined with one class"
    assert rows["ece"]["gate"]["verdict"] == "fail"
    assert rows["nll"]["value"] is None and rows["nll"]["extra"]["undefined"] == "non-finite value"
    assert rows["brier"]["value"] == 0.2 and rows["brier"]["ci"] is None and rows["brier"]["extra"]["ci_note"]
    assert (pytester.path / "reports" / "robustness.html").is_file()
