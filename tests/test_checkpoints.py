"""ARCH@PATH checkpoints: every bad file is one sentence naming the file and what is wrong (issue 13,
case 16), and a crafted pickle never runs."""
from __future__ import annotations

import pickle

import pytest

from clip_robustness.fixtures import zoo
from clip_robustness.fixtures.models import ModelLoadError, ModelSpecError, load_model, parse_model_spec

RN = zoo.get("rn-clip").checkpoint
VIT = zoo.get("vit-clip").checkpoint


def _load(spec: str):
    return load_model(parse_model_spec(spec))


def _message(spec: str, error=(ModelLoadError, ModelSpecError)) -> str:
    with pytest.raises(error) as info:
        _load(spec)
    text = str(info.value)
    assert "\n" not in text and "weights_only=False" not in text and "Traceback" not in text
    return text


class Marker:
    """Unpickling it creates a file: proof that the pickle ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_wrong_architecture_names_the_shapes():
    text = _message(f"world-vit-tiny@{RN}")
    assert f"{RN} does not match architecture world-vit-tiny: 1 tensor has another shape (e.g. visual.conv1.weight: " \
           "checkpoint (8, 3, 3, 3) vs model (128, 3, 8, 8)), 55 missing (e.g. visual.class_embedding), 122 unexpected " \
           "(e.g. visual.attnpool.c_proj.bias); pass the architecture it was trained with" in text


def test_vit_checkpoint_into_a_resnet_has_a_detail():
    text = _message(f"world-rn-tiny@{VIT}")
    assert "does not match architecture world-rn-tiny: " in text and "122 missing (e.g. visual.bn1.weight)" in text


def test_rn50_mismatch_is_not_a_text_pos_embed_assertion():
    text = _message(f"RN50@{RN}")
    assert "does not match architecture RN50: " in text and "tensors have other shapes" in text
    assert "pos_embed width changed" not in text


def test_empty_file(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    text = _message(f"world-rn-tiny@{tmp_path / 'model.pt'}", ModelSpecError)
    assert f"{tmp_path / 'model.pt'}: file is empty (0 bytes)" in text and "EOFError" not in text


def test_directory(tmp_path):
    (tmp_path / "open_clip_model.safetensors").write_bytes(RN.read_bytes())
    text = _message(f"world-rn-tiny@{tmp_path}", ModelSpecError)
    assert f"{tmp_path} is a directory, not a checkpoint file; pass the .pt/.safetensors file inside it " \
           f"(e.g. world-rn-tiny@{tmp_path / 'open_clip_model.safetensors'})" in text


def test_safetensors_named_pt_is_refused_with_the_rename(tmp_path):
    (tmp_path / "model.pt").write_bytes(RN.read_bytes())
    text = _message(f"world-rn-tiny@{tmp_path / 'model.pt'}", ModelSpecError)
    assert "holds safetensors data but its name ends in '.pt'" in text and "rename it to model.safetensors" in text


def test_unknown_bytes(tmp_path):
    (tmp_path / "model.pt").write_text("hello, not a checkpoint")
    assert "is neither a safetensors file nor a torch.save checkpoint" in _message(
        f"world-rn-tiny@{tmp_path / 'model.pt'}", ModelSpecError)


def test_truncated_torch_file(tmp_path):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(RN)), tmp_path / "full.pt")
    (tmp_path / "model.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:5000])
    text = _message(f"world-rn-tiny@{tmp_path / 'model.pt'}", ModelSpecError)  # at start, from the zip directory
    assert f"{tmp_path / 'model.pt'}: the file is truncated (5000 bytes, less than its torch header or zip index " \
           "says it holds); the save or the copy was cut short, copy it again" in text


@pytest.mark.parametrize("keep", [100_000, 20], ids=["tensors-cut", "header-cut"])
def test_truncated_safetensors_file_is_refused_at_start(tmp_path, keep):
    """It was five setup errors ("incomplete metadata, file not fully covered") after start-up."""
    (tmp_path / "model.safetensors").write_bytes(RN.read_bytes()[:keep])
    text = _message(f"world-rn-tiny@{tmp_path / 'model.safetensors'}", ModelSpecError)
    assert f"the file is truncated ({keep} bytes, less than its safetensors header" in text
    assert parse_model_spec(f"world-rn-tiny@{RN}") and _load(f"world-rn-tiny@{RN}")  # a whole file still loads


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_crafted_pickle_never_runs(tmp_path, writer):
    import torch

    marker, path = tmp_path / "ran", tmp_path / "model.pt"
    payload = {"visual.conv1.weight": Marker(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    text = _message(f"world-rn-tiny@{path}")
    assert not marker.exists()
    assert f"{path} holds arbitrary Python objects besides tensors, which the harness will not unpickle because " \
           "that can run code; convert it to safetensors" in text


def test_a_checkpoint_file_does_not_log_that_the_model_is_random(caplog):
    """open_clip warns "initialized randomly" for the bare model the file then fills: that would mislead."""
    import logging

    with caplog.at_level(logging.INFO):
        _load(f"world-rn-tiny@{RN}")
        assert not [r for r in caplog.records if "randomly" in r.getMessage()]
        _load("world-rn-tiny:random")  # a random model is random: that warning stays
    assert [r for r in caplog.records if "randomly" in r.getMessage()]


def test_torch_training_checkpoint_loads_the_same_weights(tmp_path):
    """open_clip's training checkpoints: {'state_dict': {'module.' + key: tensor}, 'epoch': ...}."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(RN))
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "epoch_3.pt")
    assert _load(f"world-rn-tiny@{tmp_path / 'epoch_3.pt'}").weights_sha256 == _load(f"world-rn-tiny@{RN}").weights_sha256


def test_bad_checkpoint_is_a_usage_error_at_start(pytester, run_harness):
    (pytester.path / "model.pt").write_bytes(b"")
    result = run_harness("--model", "world-rn-tiny@model.pt")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--model 'world-rn-tiny@model.pt': model.pt: file is empty (0 bytes)*"])
