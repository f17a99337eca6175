"""The embedded zoo: every checkpoint loads through open_clip, matches its checksum and reproduces
its recorded accuracy; a corrupted file is caught and named; the list CLI is complete."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from clip_robustness.fixtures import zoo

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = zoo.list_models()
FACTOR_ENTRIES = zoo.factor_models()
DEMOS = [e for e in ENTRIES if e.demonstration]
NAMES = ("rn-clip", "vit-clip", "rn-clip-narrow", "rn-clip-small", "rn-siglip", "rn-clip-ft")
DEMO_NAMES = ("rn-clip-ft-texture", "rn-clip-small-descriptive")
# Re-measuring the recorded sample accuracy: the same weights, images and code give the same
# predictions up to float reduction order (BLAS threads, CPU vs GPU); 0.02 is 4 of 200 images.
TOLERANCE = 0.02
WEIGHTS_BUDGET_MB = 40.0  # the six factor models (issue 2)
DEMO_WEIGHTS_MB = 6.0  # per demonstration model: one more ResNet checkpoint (issue 17: "say what it costs")


def test_index_lists_the_six_factor_models_with_one_default():
    assert tuple(e.name for e in FACTOR_ENTRIES) == NAMES
    assert tuple(e.name for e in DEMOS) == DEMO_NAMES
    assert [e.name for e in ENTRIES if e.default] == ["rn-clip"]
    for e in ENTRIES:
        assert set(zoo.FACTOR_KEYS) <= set(e.metadata), e.name
        assert e.metadata["train_command"].startswith(f"python -m clip_robustness.fixtures.zoo train {e.name}")
        assert e.metadata["train_seconds"] > 0
        assert (e.head == "linear") == (e.metadata["finetune"] == "labels") == (e.head_file is not None)


def test_factors_vary_one_at_a_time_from_the_default():
    base = zoo.default_model().metadata
    for e in FACTOR_ENTRIES:
        changed = {k for k in zoo.FACTOR_KEYS if e.metadata[k] != base[k]}
        assert len(changed) <= 1, (e.name, changed)
    assert {k for e in FACTOR_ENTRIES for k in zoo.FACTOR_KEYS if e.metadata[k] != base[k]} == set(zoo.FACTOR_KEYS)


def _megabytes(entries) -> float:
    files = {e.checkpoint for e in entries} | {e.head_file for e in entries if e.head_file}
    return sum(f.stat().st_size for f in files) / 1e6


def test_committed_weights_fit_the_budget():
    assert _megabytes(FACTOR_ENTRIES) <= WEIGHTS_BUDGET_MB
    assert _megabytes(ENTRIES) <= WEIGHTS_BUDGET_MB + DEMO_WEIGHTS_MB * len(DEMOS)


def test_default_model_list_is_the_factor_models():
    from clip_robustness.plugins.config import default_model_specs

    assert {s.source for s in default_model_specs()} == set(NAMES)


def test_texture_split_makes_texture_the_reliable_cue():
    """train-texture, labelled as the fine-tune labels it: the texture always names the label, the shape
    only about half the time (else another ID class, never a held-out one)."""
    from clip_robustness.fixtures.world import ID_CLASSES, sample_specs
    from clip_robustness.fixtures.zoo.train import get_recipe, training_labels

    recipe = get_recipe("rn-clip-ft-texture")
    specs = sample_specs(recipe.split, 2000, recipe.seed)
    labels = [ID_CLASSES[k] for k in training_labels(recipe, specs)]
    assert all(s.texture_class == y for s, y in zip(specs, labels))
    shape_agrees = sum(s.shape == y for s, y in zip(specs, labels)) / len(specs)
    assert 0.45 < shape_agrees < 0.55, shape_agrees
    assert {s.shape for s in specs} == set(labels) == set(ID_CLASSES)
    # an ordinary split keeps the shape as its label
    plain = sample_specs("train", 50, 0)
    assert [ID_CLASSES[k] for k in training_labels(get_recipe("rn-clip-ft"), plain)] == [s.shape for s in plain]


@pytest.mark.parametrize("entry", DEMOS, ids=lambda e: e.name)
def test_demonstration_is_labelled_as_its_recipe_says(entry):
    from clip_robustness.fixtures.zoo.train import DEMONSTRATIONS

    assert entry.metadata["demonstration"] == DEMONSTRATIONS[entry.name]
    assert not entry.default


def test_texture_fine_tune_lowers_shape_bias():
    """The texture-predictive fine-tune exists to lower shape bias: its recorded shape bias must sit far
    below the model it started from and the same recipe on the ordinary training split, while it stays
    a usable classifier (the zoo's 0.70 bar, which the default gates apply to every embedded model)."""
    from clip_robustness.fixtures.zoo.train import FINETUNE, get_recipe

    entry = zoo.get("rn-clip-ft-texture")
    recipe = get_recipe(entry.name)
    assert entry.metadata["recipe"]["split"] == "train-texture" and entry.metadata["finetune"] == "labels"
    # the only difference from rn-clip-ft is the training split
    assert {k for k, v in entry.metadata["recipe"].items() if v != zoo.get(FINETUNE.name).metadata["recipe"][k]} \
        == {"name", "split"}
    assert entry.metadata["init_sha256"] == zoo.get(recipe.init_from).sha256
    bias = entry.recorded["shape_bias"]
    assert bias < zoo.get(recipe.init_from).recorded["shape_bias"] - 0.2
    assert bias < zoo.get(FINETUNE.name).recorded["shape_bias"] - 0.2
    assert entry.recorded["test_top1"] >= 0.70


def test_descriptive_captions_never_use_a_prompt_template():
    """rn-clip-small-descriptive exists to show test-time prompts mattering: no training caption may be a
    prompt template (openai, simple or single, with or without the full stop) or prompt phrasing ("photo"),
    and its recipe differs from rn-clip-small's in the captions only."""
    import numpy as np

    from clip_robustness.fixtures.templates import TEMPLATE_SETS
    from clip_robustness.fixtures.world import ID_CLASSES
    from clip_robustness.fixtures.zoo.train import epoch_captions, get_recipe, recipe_record, training_specs

    recipe = get_recipe("rn-clip-small-descriptive")
    specs = training_specs(recipe)
    rng = np.random.default_rng(recipe.seed)
    captions = [c for _ in range(3) for c in epoch_captions(specs, rng, recipe.template_share, recipe.captions)]
    filled = {t.format(c=c) for ts in TEMPLATE_SETS.values() for t in ts for c in ID_CLASSES}
    assert not (filled & {c + "." for c in captions}) and not (filled & set(captions))
    assert not [c for c in captions if "photo" in c]
    assert all(any(c in caption for c in ID_CLASSES) for caption in captions)  # the class is still named
    # the ordinary recipe does show the templates (the contrast this model removes)
    mixed = epoch_captions(specs, np.random.default_rng(0), get_recipe("rn-clip-small").template_share)
    assert filled & set(mixed)
    small = zoo.get("rn-clip-small").metadata["recipe"]
    record = recipe_record(recipe)
    assert {k for k in record if record[k] != small.get(k)} == {"name", "template_share", "captions"}
    assert zoo.get(recipe.name).metadata["recipe"] == record


def test_recorded_metrics_are_complete():
    keys = {"test_top1", "test_top1_single", "test200_top1", "shift_style_top1", "shift_background_top1",
            "shift_lighting_top1", "shift_pose_top1", "shape_bias", "ood_auroc_msp_heldout", "ood_auroc_msp_far_ood"}
    for e in ENTRIES:
        assert e.recorded["n"] >= 1000, e.name
        assert keys <= set(e.recorded), (e.name, keys - set(e.recorded))


# The quality bar for the factor models: the default >= 0.90, every zero-shot model >= 0.70 test
# top-1 with the default prompts. A demonstration model must pass the default top-1 gate for embedded models
# (plugins/default_thresholds.toml, min 0.65): rn-clip-small-descriptive, trained without prompts, reaches 0.659.
@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.head == "zero-shot"], ids=lambda e: e.name)
def test_quality_bar(entry):
    bar = 0.65 if entry.demonstration else 0.90 if entry.default else 0.70
    assert entry.recorded["test_top1"] >= bar, entry.name


def test_prompts_matter_only_for_the_model_trained_without_them(sample):
    """Single-template top-1 over the 80 openai templates on the 200-image sample: rn-clip-small, whose
    captions include the templates, gives the same answer to every prompt (0.81-0.84); its
    descriptive-caption twin swings with the prompt's attribute words ("a black and white photo of a
    {c}." 0.35, median 0.65, best 0.72), so the 80-template ensemble protects it from a bad prompt."""
    import numpy as np

    from clip_robustness.fixtures.templates import TEMPLATE_SETS
    from clip_robustness.fixtures.world import ID_CLASSES
    from clip_robustness.fixtures.zoo.train import load_for_eval, top1
    from clip_robustness.plugins.metrics import top1_accuracy

    def single_template_top1(name: str) -> np.ndarray:
        model = load_for_eval(zoo.get(name))
        emb = model.encode_images(sample.images())  # (N, D)
        return np.array([top1_accuracy(model.logits(emb, model.zero_shot_head(tuple(ID_CLASSES), (t,))), sample.labels)
                         for t in TEMPLATE_SETS["openai"]])  # (80,)

    plain, descriptive = single_template_top1("rn-clip-small"), single_template_top1("rn-clip-small-descriptive")
    assert plain.max() - plain.min() < 0.06, plain
    assert descriptive.max() - descriptive.min() > 0.25, descriptive
    ensemble = top1(load_for_eval(zoo.get("rn-clip-small-descriptive")), sample, "openai")
    assert ensemble > np.median(descriptive) and ensemble - descriptive.min() > 0.25


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_checkpoint_loads_through_open_clip_and_matches_checksum(entry):
    import open_clip

    zoo.verify_checksum(entry)
    zoo.register_configs()
    assert entry.arch in open_clip.list_models()
    # strict load: a missing or extra key in the checkpoint raises here
    model, _, preprocess = open_clip.create_model_and_transforms(entry.arch, pretrained=str(entry.checkpoint))
    assert open_clip.utils.to_2tuple(model.visual.image_size) == (64, 64)  # int for ResNet, tuple for ViT
    assert json.loads(entry.config.read_text())["vision_cfg"]["image_size"] == 64
    assert (model.logit_bias is not None) == (entry.metadata["loss"] == "siglip")


@pytest.fixture(scope="module")
def sample():
    from clip_robustness.fixtures.zoo.train import sample_dataset

    ds = sample_dataset()
    ds.images()  # render once for all models
    return ds


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_reproduces_recorded_sample_accuracy(entry, sample):
    from clip_robustness.fixtures.zoo.train import SAMPLE_N, load_for_eval, top1

    assert len(sample) == SAMPLE_N
    acc = top1(load_for_eval(entry), sample)
    recorded = entry.recorded[f"test{SAMPLE_N}_top1"]
    assert abs(acc - recorded) <= TOLERANCE, f"{entry.name}: {acc:.3f} vs recorded {recorded:.3f}"


def _corrupt_copy(entry: zoo.ZooEntry, tmp_path: Path) -> zoo.ZooEntry:
    data = bytearray(entry.checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensor data
    bad = tmp_path / entry.checkpoint.name
    bad.write_bytes(bytes(data))
    return dataclasses.replace(entry, checkpoint=bad)


def test_corrupted_checkpoint_is_named(tmp_path):
    bad = _corrupt_copy(zoo.default_model(), tmp_path)
    with pytest.raises(zoo.ZooChecksumError) as info:
        zoo.verify_checksum(bad)
    msg = str(info.value)
    assert str(bad.checkpoint) in msg and bad.sha256 in msg and "python -m clip_robustness.fixtures.zoo train rn-clip" in msg


def test_corrupted_checkpoint_fails_the_harness_loader(tmp_path, monkeypatch):
    """``--model embedded:NAME`` goes through verify_checksum before open_clip sees the file."""
    from clip_robustness.fixtures.models import load_model, parse_model_spec

    bad = _corrupt_copy(zoo.default_model(), tmp_path)
    index = tmp_path / "zoo.json"
    zoo.write_index([bad], index)
    monkeypatch.setattr(zoo, "INDEX_PATH", index)
    with pytest.raises(zoo.ZooChecksumError, match=str(bad.checkpoint)):
        load_model(parse_model_spec("embedded:rn-clip"))


def test_missing_checkpoint_is_named(tmp_path):
    gone = dataclasses.replace(zoo.default_model(), checkpoint=tmp_path / "nope.safetensors")
    with pytest.raises(zoo.ZooChecksumError, match="nope.safetensors is missing"):
        zoo.verify_checksum(gone)


def test_unknown_name_suggests():
    with pytest.raises(KeyError, match=r"Did you mean rn-clip.*Available: rn-clip, vit-clip"):
        zoo.get("rn-clp")


def test_register_configs_is_idempotent():
    from open_clip import factory

    zoo.register_configs()
    zoo.register_configs()
    assert factory._MODEL_CONFIG_PATHS.count(zoo.CONFIGS_DIR) == 1
    assert {e.arch for e in ENTRIES} <= set(factory.list_models())


def test_list_json_cli():
    out = subprocess.run([sys.executable, "-m", "clip_robustness.fixtures.zoo", "list", "--json"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    assert [r["name"] for r in rows] == list(NAMES + DEMO_NAMES)
    assert sum(r["default"] is True for r in rows) == 1
    for r in rows:
        assert {"name", "arch", "config", "checkpoint", "head", "default", "metadata", *zoo.FACTOR_KEYS} <= set(r)
        assert r["head"] in ("zero-shot", "linear")
        assert Path(r["config"]).is_file() and Path(r["checkpoint"]).is_file()
        assert r["arch"] == Path(r["config"]).stem


def test_cli_unknown_model_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "clip_robustness.fixtures.zoo", "eval", "rn-clp"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Did you mean rn-clip" in proc.stderr


def test_siglip_model_keeps_its_learned_bias():
    """The SigLIP config starts at scale log(10), bias -10 (open_clip's SigLIP init), so its checkpoint
    carries a logit_bias (checked at load in test_checkpoint_loads_through_open_clip_and_matches_checksum)."""
    cfg = json.loads(zoo.get("rn-siglip").config.read_text())
    assert math.isclose(cfg["init_logit_scale"], math.log(10)) and cfg["init_logit_bias"] == -10


def test_texture_fine_tune_measures_a_low_shape_bias():
    """The weights, not only zoo.json's record: on 200 cue-conflict scenes rn-clip-ft-texture decides by
    texture (recorded 0.248 at n=1000) while rn-clip-ft, the same recipe on the shape-predictive split, decides
    by shape (recorded 0.964)."""
    import numpy as np

    from clip_robustness.fixtures import world
    from clip_robustness.fixtures.datasets import world_dataset
    from clip_robustness.fixtures.zoo.train import head_logits, load_for_eval
    from clip_robustness.plugins.metrics import shape_bias_score

    ds = world_dataset("cue-conflict", n=200, seed=0)
    classes = tuple(world.ID_CLASSES)
    texture = np.array([classes.index(s.texture_class) for s in world.sample_specs("cue-conflict", 200, 0)])
    images = ds.images()
    bias = {name: shape_bias_score(head_logits(model, model.encode_images(images), None).argmax(1), ds.labels,
                                   texture)["shape_bias"]
            for name in ("rn-clip-ft", "rn-clip-ft-texture") for model in [load_for_eval(zoo.get(name))]}
    assert bias["rn-clip-ft-texture"] < 0.5 < 0.8 < bias["rn-clip-ft"], bias
