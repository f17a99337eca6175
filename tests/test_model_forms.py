"""open_clip's model-name forms in --model (issue 15): ``local-dir:PATH`` (a folder with open_clip_config.json and
the weights, as open_clip's hub export writes it) loads offline through open_clip's own schema and measures the
same model as the checkpoint it came from; a folder open_clip could not use is one sentence at start-up."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clip_robustness.fixtures import zoo
from clip_robustness.fixtures.model_specs import local_dir_weights
from clip_robustness.fixtures.models import ModelLoadError, ModelSpecError, load_model, parse_model_spec
from tests.conftest import RANDOM_MODEL

RN = zoo.get("rn-clip")


def _export(model, entry, folder: Path) -> Path:
    """``folder`` as open_clip's hub export writes it: its config writer, the weights as open_clip_model.safetensors."""
    from open_clip.push_to_hf_hub import save_config_for_hf

    folder.mkdir(parents=True)
    save_config_for_hf(model, folder / "open_clip_config.json", json.loads(entry.config.read_text()))
    shutil.copyfile(entry.checkpoint, folder / "open_clip_model.safetensors")
    return folder


@pytest.fixture(scope="module")
def embedded():
    return load_model(parse_model_spec("embedded:rn-clip"))


@pytest.fixture(scope="module")
def exported(embedded, tmp_path_factory) -> Path:
    return _export(embedded.model, RN, tmp_path_factory.mktemp("team") / "rn clip export")


def test_local_dir_spec_parses_as_open_clip_names_it():
    spec = parse_model_spec("local-dir:runs/export v2;finetune=ft")
    assert (spec.kind, spec.arch, spec.source, spec.id, spec.meta) == (
        "local-dir", "", "runs/export v2", "local-dir:runs/export v2", {"finetune": "ft"})
    assert parse_model_spec(spec.id) == parse_model_spec("local-dir:runs/export v2")
    with pytest.raises(ModelSpecError, match="missing folder after 'local-dir:'"):
        parse_model_spec("local-dir:")


def test_local_dir_loads_offline_and_measures_the_same_model(embedded, exported, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model(parse_model_spec(f"local-dir:{exported}"))
    assert loaded.id == f"local-dir:{exported}"
    assert loaded.weights_sha256 == embedded.weights_sha256
    assert loaded.preprocess_cfg == embedded.preprocess_cfg
    assert (loaded.logit_scale, loaded.logit_bias) == (embedded.logit_scale, embedded.logit_bias)
    images = list(np.random.default_rng(0).integers(0, 256, (4, 48, 40, 3), dtype=np.uint8))
    np.testing.assert_allclose(loaded.encode_images(images), embedded.encode_images(images), rtol=1e-6, atol=1e-7)
    texts = ["a photo of a mug.", "a rendering of a chair."]
    np.testing.assert_allclose(loaded.encode_texts(texts), embedded.encode_texts(texts), rtol=1e-6, atol=1e-7)


def test_a_harness_run_reports_the_local_dir_model(embedded, exported, pytester, run_harness):
    pytester.makepyfile(test_top1='''
import pytest

pytestmark = pytest.mark.accuracy

def test_top1(clip, record):
    record("top1", 0.5, dataset="synthetic")
''')
    spec = f"local-dir:{exported}"
    run_harness("--model", spec).assert_outcomes(passed=1)
    data = json.loads((pytester.path / "reports" / "robustness.json").read_text())
    assert [r["model"] for r in data["results"]] == [spec]
    info = data["run"]["models"][spec]
    assert (info["status"], info["sha256"], info["arch"]) == ("measured", embedded.weights_sha256, "")


def _folder(tmp_path: Path, config: object = None, files: dict[str, bytes] | None = None) -> str:
    folder = tmp_path / "export"
    folder.mkdir()
    if config is not None:
        (folder / "open_clip_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    for name, data in (files or {}).items():
        (folder / name).write_bytes(data)
    return f"local-dir:{folder}"


def _safetensors() -> bytes:
    from safetensors.numpy import save

    return save({"x": np.zeros(2, np.float32)})


GOOD_CONFIG = {"model_cfg": json.loads(RN.config.read_text())}


@pytest.mark.parametrize("config, files, fragment", [
    (None, {}, "holds no open_clip_config.json; write it with open_clip's push_to_hf_hub.save_config_for_hf"),
    ("{not json", {}, "open_clip_config.json cannot be read as JSON"),
    ({"embed_dim": 64}, {}, "has no model_cfg with embed_dim, vision_cfg and text_cfg"),
    (GOOD_CONFIG, {"README.md": b"x"}, "holds no weights (*.safetensors, *.bin or *.pth), and open_clip would "
                                       "measure randomly initialised weights"),
    (GOOD_CONFIG, {"open_clip_pytorch_model.bin": b"garbage, not weights"}, "is neither a safetensors file nor"),
    (GOOD_CONFIG, {"open_clip_pytorch_model.bin": _safetensors()}, "holds safetensors data but its name ends in "
                                                                   "'.bin'"),
])
def test_a_folder_open_clip_cannot_use_is_one_sentence(tmp_path, config, files, fragment):
    spec = parse_model_spec(_folder(tmp_path, config, files))
    with pytest.raises(ModelSpecError) as info:
        load_model(spec)
    assert fragment in str(info.value) and str(info.value).startswith(f"--model {spec.raw!r}: ")
    assert "\n" not in str(info.value)


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ModelSpecError, match=r"nope is not a folder \(resolved to .*\); local-dir:PATH names a folder"):
        load_model(parse_model_spec(f"local-dir:{tmp_path / 'nope'}"))


def test_weights_of_another_architecture_name_the_config(tmp_path):
    vit = zoo.get("vit-clip")
    spec = _folder(tmp_path, {"model_cfg": json.loads(vit.config.read_text())})
    shutil.copyfile(RN.checkpoint, Path(spec[len("local-dir:"):]) / "open_clip_model.safetensors")
    with pytest.raises(ModelLoadError, match="the checkpoint does not match the model_cfg of its open_clip_config.json "
                                             r"\(.*\)\. Write the model_cfg the checkpoint was trained with\."):
        load_model(parse_model_spec(spec))


@pytest.mark.parametrize("names", [
    ("model.safetensors", "open_clip_pytorch_model.bin", "open_clip_model.safetensors"),
    ("b.safetensors", "a.bin", "a.safetensors"),
    ("pytorch_model.bin", "weights.pth", "z.safetensors"),
    ("b.pth", "a.bin"),
])
def test_the_weights_checked_are_the_ones_open_clip_loads(tmp_path, names):
    import io

    import torch
    from open_clip.factory import _find_checkpoint_in_dir  # open_clip's own choice: the reference

    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(2)}, buffer)
    files = {n: _safetensors() if n.endswith(".safetensors") else buffer.getvalue() for n in names}
    spec = parse_model_spec(_folder(tmp_path, GOOD_CONFIG, files))
    assert local_dir_weights(spec) == Path(_find_checkpoint_in_dir(Path(spec.source)))


def test_start_up_refuses_a_bad_local_dir_before_any_test(pytester, run_harness):
    pytester.makepyfile(test_top1="import pytest\n\n@pytest.mark.accuracy\ndef test_x(clip):\n    pass\n")
    result = run_harness("--model", RANDOM_MODEL, "--model", f"local-dir:{pytester.path / 'missing'}")
    assert result.ret == 4 and "Traceback" not in result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(["*missing is not a folder*local-dir:PATH names a folder holding "
                                 "open_clip_config.json and the weights*"])


def test_a_metadata_key_given_twice_is_refused():
    with pytest.raises(ModelSpecError, match=r"metadata key 'finetune' is given twice; give each key once"):
        parse_model_spec("embedded:rn-clip;finetune=a;finetune=b")
