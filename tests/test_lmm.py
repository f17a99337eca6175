"""The LMM property: adapter (against tiny random transformers LLaVAs), protocol, embedded LMM, harness runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clip_robustness.fixtures.lmm.adapter import LMMError, identify_tower, load_lmm, parse_lmm_spec, run_lmms
from clip_robustness.fixtures.lmm.protocol import (QUESTION, UNMATCHED, balanced_true_first, distractors, match_answer,
                                   option_pairs, run_protocol)
from tests.conftest import RANDOM_MODEL

WORDS = ["what", "is", "the", "main", "object", "in", "this", "image", "?", "choose", "from", "following", "list",
         ":", ",", ".", "user", "assistant", "cube", "sphere", "hexagonal", "prism", "a", "red"]


def tiny_llava(folder: Path, *, tower: str = "clip") -> Path:
    """A randomly initialised transformers LLaVA with its processor, saved to ``folder``.

    ``tower="clip"``: transformers' own CLIPVisionModel (what downloaded LLaVAs use); ``"open_clip"``:
    the harness's open_clip tower (clip_robustness.fixtures.lmm.tower) with world-rn-tiny's config.
    """
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from clip_robustness.fixtures.lmm.tower import OpenClipVisionConfig, register
    from clip_robustness.fixtures.lmm.world_llava import build_processor

    register()
    if tower == "clip":
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, patch_size=8, projection_dim=32)
        processor = build_processor(WORDS, 32, 8, strategy="default")  # 16 patch tokens (CLS dropped)
        kwargs = dict(vision_feature_select_strategy="default", vision_feature_layer=-2, image_seq_length=16)
    else:
        cfg = json.loads((Path(__file__).parents[1] / "fixtures/zoo/configs/world-rn-tiny.json").read_text())
        vision = OpenClipVisionConfig(vision_cfg=cfg["vision_cfg"], embed_dim=cfg["embed_dim"],
                                      clip_model=RANDOM_MODEL)
        processor = build_processor(WORDS, 64, 32)  # pooled + 2 x 2 grid tokens
        kwargs = dict(vision_feature_select_strategy="full", vision_feature_layer=-1, image_seq_length=5)
    tok = processor.tokenizer
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tok.convert_tokens_to_ids("<image>"), **kwargs)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).eval().save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def clip_llava(tmp_path_factory: pytest.TempPathFactory):
    folder = tiny_llava(tmp_path_factory.mktemp("llava") / "tiny")
    return load_lmm(parse_lmm_spec(f"{folder};tower={RANDOM_MODEL}"))


# ----------------------------------------------------------------------------------------- adapter

def test_adapter_loads_a_transformers_llava_and_names_its_tower(clip_llava):
    assert clip_llava.tower == RANDOM_MODEL
    assert clip_llava.prompt("what is this ?") == "USER: <image>\nwhat is this ? ASSISTANT:"
    assert clip_llava.describe()["language_model"] == "LlamaModel"


def test_option_logprobs_match_transformers_own_loss(clip_llava):
    """Independent reference: transformers' loss over the option tokens (mean NLL) times their count."""
    import torch

    imgs = images(3, 32)
    questions = [QUESTION.format(a="cube", b="hexagonal prism")] * 3
    options = [("cube", "hexagonal prism"), ("hexagonal prism", "cube"), ("red cube", "sphere")]
    got = clip_llava.option_logprobs(imgs, questions, options, batch_size=2)  # (3, 2)
    assert got.shape == (3, 2) and np.isfinite(got).all()
    proc, tok = clip_llava.processor, clip_llava.tokenizer
    for i in range(3):
        for k in range(2):
            enc = proc(images=[imgs[i]], text=[clip_llava.prompt(questions[i])], return_tensors="pt")
            tail = tok(" " + options[i][k], add_special_tokens=False)["input_ids"]
            ids = torch.cat([enc["input_ids"], torch.tensor([tail])], 1)
            labels = torch.full_like(ids, -100)
            labels[0, -len(tail):] = ids[0, -len(tail):]
            with torch.no_grad():
                loss = clip_llava.model(input_ids=ids, pixel_values=enc["pixel_values"], labels=labels).loss
            assert got[i, k] == pytest.approx(-loss.item() * len(tail), rel=1e-4, abs=1e-4)


def test_option_logprobs_do_not_depend_on_batching(clip_llava):
    imgs = images(5, 32, seed=1)
    questions = [QUESTION.format(a="cube", b="sphere"), "what is this ?", QUESTION.format(a="a", b="b"),
                 "what object ?", "is this a red cube ?"]
    options = [("cube", "sphere"), ("hexagonal prism", "red"), ("a", "b"), ("cube", "red cube"), ("sphere", "cube")]
    one = clip_llava.option_logprobs(imgs, questions, options, batch_size=1)
    many = clip_llava.option_logprobs(imgs, questions, options, batch_size=5)
    np.testing.assert_allclose(one, many, rtol=1e-4, atol=1e-4)


def test_generation_is_batched_greedy_and_deterministic(clip_llava):
    imgs = images(4, 32, seed=2)
    questions = [QUESTION.format(a="cube", b="sphere")] * 2 + ["what is this ?"] * 2
    a = clip_llava.generate(imgs, questions, max_new_tokens=4, batch_size=4)
    b = clip_llava.generate(imgs, questions, max_new_tokens=4, batch_size=1)
    assert a == b and len(a) == 4 and all(isinstance(x, str) for x in a)


def test_loglik_scoring_on_a_planted_language_model(clip_llava):
    """An LM head that ignores its input and puts logit +5 on 'cube': every option's log-probability
    is known in closed form, so the adapter's sum over option tokens is checked exactly."""
    import copy

    import torch

    lmm = copy.copy(clip_llava)
    lmm.model = copy.deepcopy(clip_llava.model)
    vocab = lmm.model.lm_head.out_features
    head = torch.nn.Linear(lmm.model.lm_head.in_features, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[lmm.tokenizer.convert_tokens_to_ids("cube")] = 5.0
    lmm.model.lm_head = head
    got = lmm.option_logprobs(images(2, 32), ["q ?"] * 2, [("cube", "hexagonal prism"), ("red cube", "sphere")])
    norm = np.log(np.exp(5.0) + vocab - 1)
    expected = np.array([[5.0 - norm, -2 * norm], [(5.0 - norm) - norm, -norm]])
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def _tower_images(lmm) -> list[int]:
    """Images seen by the vision tower, appended per call (a forward pre-hook)."""
    seen: list[int] = []
    lmm.model.model.vision_tower.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    return seen


def test_answer_runs_the_tower_once_per_image_and_equals_the_per_option_path(tmp_path):
    """``answer`` (scores + generation from one tower pass) equals what the adapter computed before:
    pixels repeated per option for scoring, and again for generation."""
    import torch

    from clip_robustness.fixtures.lmm.adapter import encode_prompts, prompt_answer_batch

    lmm = load_lmm(parse_lmm_spec(f"{tiny_llava(tmp_path / 'tiny')};tower={RANDOM_MODEL}"))
    imgs = images(3, 32, seed=4)
    questions = [QUESTION.format(a="cube", b="sphere"), "what is this ?", QUESTION.format(a="red", b="cube")]
    options = [("cube", "sphere"), ("hexagonal prism", "red"), ("cube", "red cube")]
    seen = _tower_images(lmm)
    loglik, answers = lmm.answer(imgs, questions, options, max_new_tokens=4, batch_size=2)
    assert seen == [2, 1]  # one pass per image, shared by both options and by generation
    before = np.empty((3, 2))
    for start in (0, 2):
        sl = slice(start, start + 2)
        ids, mask, spans, pixels = prompt_answer_batch(lmm.processor, imgs[sl], questions[sl], options[sl])
        with torch.inference_mode():
            logp = torch.log_softmax(lmm.model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits, -1)
        before[sl] = np.reshape([logp[j, a - 1:b - 1].gather(-1, ids[j, a:b, None]).sum().item()
                                 for j, (a, b) in enumerate(spans)], (-1, 2))
    enc = encode_prompts(lmm.processor, imgs, questions, "left")
    with torch.inference_mode():
        out = lmm.model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=lmm.tokenizer.pad_token_id)
    generated = [a.strip() for a in lmm.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                               skip_special_tokens=True)]
    np.testing.assert_allclose(loglik, before, rtol=1e-5, atol=1e-5)
    assert answers == generated == lmm.generate(imgs, questions, max_new_tokens=4, batch_size=2)
    np.testing.assert_allclose(lmm.option_logprobs(imgs, questions, options, batch_size=2), loglik, rtol=1e-6)


def test_protocol_outcomes_are_cached_by_lmm_items_and_questions(clip_llava, tmp_path):
    from clip_robustness.fixtures.cache import EmbeddingCache

    imgs, labels = images(4, 32, seed=5), np.array([0, 1, 2, 0])
    logits = np.random.default_rng(0).normal(size=(4, 3))
    names, ids = ("cube", "sphere", "hexagonal prism"), [f"item{i}" for i in range(4)]
    rendered = []

    def load():
        rendered.append(1)
        return imgs

    def run(cache, item_ids=ids, classnames=names):
        return run_protocol(clip_llava, load, labels, logits, classnames, seed=0, max_new_tokens=3, cache=cache,
                            item_ids=item_ids)

    first = run(EmbeddingCache(tmp_path))
    assert rendered == [1]
    again = run(EmbeddingCache(tmp_path))  # a new process: read from disk, nothing rendered or asked
    assert rendered == [1] and again.answers == first.answers
    np.testing.assert_array_equal(again.loglik, first.loglik)
    fresh = run_protocol(clip_llava, imgs, labels, logits, names, seed=0, max_new_tokens=3)  # no cache
    np.testing.assert_array_equal(fresh.loglik, first.loglik)
    assert fresh.answers == first.answers
    run(EmbeddingCache(tmp_path), item_ids=ids[:3] + ["other"])  # a changed item never hits
    run(EmbeddingCache(tmp_path), classnames=("cube", "sphere", "red"))  # nor a changed option
    assert rendered == [1, 1, 1]


def test_open_clip_tower_pooled_token_is_the_clips_image_embedding(tmp_path):
    """The tower a world LLaVA uses is the CLIP's own: its first token is the CLIP image embedding."""
    import torch

    from clip_robustness.fixtures.models import load_model, parse_model_spec

    lmm = load_lmm(parse_lmm_spec(str(tiny_llava(tmp_path / "oc", tower="open_clip"))))
    clip = load_model(parse_model_spec(RANDOM_MODEL))
    lmm.model.model.vision_tower.visual.load_state_dict(clip.model.visual.state_dict())
    assert lmm.tower == RANDOM_MODEL  # recorded in the tower's config, no ;tower= needed
    imgs = images(3, 64, seed=3)
    pixels = lmm.processor.image_processor(imgs, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tokens = lmm.model.model.vision_tower(pixels).last_hidden_state  # (3, 5, 64)
    assert tokens.shape == (3, 5, 64)
    emb = tokens[:, 0] / tokens[:, 0].norm(dim=-1, keepdim=True)
    np.testing.assert_allclose(emb.numpy(), clip.encode_images(imgs), atol=2e-3)
    assert lmm.option_logprobs(imgs, ["what is this ?"] * 3, [("cube", "sphere")] * 3).shape == (3, 2)


# ------------------------------------------------------------------------------------------- specs

def test_lmm_specs_parse_and_bad_ones_say_what_to_do(tmp_path):
    assert parse_lmm_spec("embedded").id == "embedded:world-llava"
    assert parse_lmm_spec("hf:llava-hf/llava-1.5-7b-hf").kind == "hf"
    with pytest.raises(LMMError, match="only option is ';tower="):
        parse_lmm_spec("embedded;towr=x")
    with pytest.raises(LMMError, match="not ORG/NAME"):
        parse_lmm_spec("hf:nope")
    with pytest.raises(LMMError, match="no config.json"):
        load_lmm(parse_lmm_spec(str(tmp_path)))
    with pytest.raises(LMMError, match="no embedded LMM 'world-lava'.*Did you mean world-llava"):
        load_lmm(parse_lmm_spec("embedded:world-lava"))


def test_unknown_tower_asks_for_tower_option():
    from types import SimpleNamespace

    config = SimpleNamespace(vision_config=SimpleNamespace())
    with pytest.raises(LMMError, match=r";tower=ViT-L-14-336:openai"):
        identify_tower(parse_lmm_spec("hf:someone/llava-custom"), config)
    assert identify_tower(parse_lmm_spec("hf:llava-hf/llava-1.5-7b-hf"), config) == "ViT-L-14-336:openai"


def test_default_lmms_follow_the_runs_models():
    assert [s.id for s, _ in run_lmms([], ["embedded:rn-clip"])] == ["embedded:world-llava"]
    assert run_lmms([], ["ViT-B-32:openai"]) == []
    (spec, tower), = run_lmms(["hf:llava-hf/llava-1.5-7b-hf"], [])
    assert tower == "ViT-L-14-336:openai"


def test_demonstration_lmms_run_only_by_name(tmp_path, monkeypatch):
    """An LMM whose lmm.json carries "demonstration" stays out of the default list and runs when named."""
    from clip_robustness.fixtures.lmm import adapter

    for name in ("world-llava", "demo-llava"):
        (tmp_path / name).mkdir()
        for file in ("config.json", "lmm.json"):
            shutil.copy(adapter.EMBEDDED_DIR / "world-llava" / file, tmp_path / name / file)
    record = json.loads((tmp_path / "demo-llava" / "lmm.json").read_text())
    (tmp_path / "demo-llava" / "lmm.json").write_text(json.dumps({**record, "demonstration": "a mechanism"}))
    monkeypatch.setattr(adapter, "EMBEDDED_DIR", tmp_path)
    assert adapter.embedded_names() == ["demo-llava", "world-llava"]
    assert [s.id for s, _ in run_lmms([], ["embedded:rn-clip"])] == ["embedded:world-llava"]
    assert [(s.id, t) for s, t in run_lmms(["embedded:demo-llava"], ["embedded:rn-clip"])] == [
        ("embedded:demo-llava", "embedded:rn-clip")]


def test_outside_knowledge_lmm_is_labelled_and_never_trained_on_evaluated_scenes():
    """world-llava-outside: world-llava's recipe and tower plus shift-split renders, whose scenes are not
    the ones the lmm property evaluates (sample_specs(split, n, --seed 0)); drawn with seed 0 they would be."""
    from dataclasses import asdict

    from clip_robustness.fixtures import world
    from clip_robustness.fixtures.datasets import WORLD_SIZES
    from clip_robustness.fixtures.lmm.adapter import embedded_record
    from clip_robustness.fixtures.lmm.world_llava import DEMONSTRATIONS, RECIPE, RECIPES

    recipe = RECIPES["world-llava-outside"]
    record, base = embedded_record(recipe.name), embedded_record(RECIPE.name)
    assert record["demonstration"] == DEMONSTRATIONS[recipe.name] and "demonstration" not in base
    assert record["recipe"] == json.loads(json.dumps(asdict(recipe)))
    assert (record["tower"], record["tower_sha256"]) == (base["tower"], base["tower_sha256"])
    # the same recipe as world-llava but for the outside data (world-llava's record predates those fields)
    differs = {k for k, v in asdict(recipe).items() if json.loads(json.dumps(v)) != base["recipe"].get(k)}
    assert differs == {"name", "outside_splits", "outside_images", "outside_seed"}
    for split in recipe.outside_splits:
        evaluated = {s.id for s in world.sample_specs(split, WORLD_SIZES[split], 0)}
        assert not evaluated & {s.id for s in world.sample_specs(split, recipe.outside_images, recipe.outside_seed)}
        assert evaluated <= {s.id for s in world.sample_specs(split, recipe.outside_images, 0)}


def test_corrupted_embedded_weights_name_the_file(tmp_path, monkeypatch):
    from clip_robustness.fixtures.lmm import adapter

    src = adapter.EMBEDDED_DIR / "world-llava"
    shutil.copytree(src, tmp_path / "world-llava")
    weights = tmp_path / "world-llava" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(adapter, "EMBEDDED_DIR", tmp_path)
    with pytest.raises(LMMError, match=r"model\.safetensors: sha256 does not match"):
        load_lmm(parse_lmm_spec("embedded"))


# ---------------------------------------------------------------------------------------- protocol

def test_distractor_is_the_clips_top1_when_wrong_else_top2():
    logits = np.array([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    labels = np.array([0, 0, 2])
    np.testing.assert_array_equal(distractors(logits, labels), [1, 1, 1])


@given(st.lists(st.integers(0, 6), min_size=1, max_size=200), st.integers(0, 2**31))
def test_option_order_is_balanced_per_class_and_overall(labels, seed):
    labels = np.array(labels)
    first = balanced_true_first(labels, seed)
    assert abs(int(first.sum()) * 2 - len(labels)) <= 1
    for cls in np.unique(labels):
        members = first[labels == cls]
        assert abs(int(members.sum()) * 2 - len(members)) <= 1
    np.testing.assert_array_equal(first, balanced_true_first(labels, seed))


def test_option_pairs_follow_the_order():
    pairs = option_pairs(("cube", "sphere", "cone"), np.array([0, 1]), np.array([2, 0]), np.array([True, False]))
    assert pairs == [("cube", "cone"), ("cube", "sphere")]


@pytest.mark.parametrize("answer,expected", [
    ("Cube.", 1), ("The main object is a sphere", 0), ("cube or sphere", UNMATCHED), ("a torus", UNMATCHED),
    ("cubes", UNMATCHED), ("coffee cup", 0), ("a cup", 1), ("A coffee cup and a cup", UNMATCHED),
])
def test_answers_are_matched_as_whole_words(answer, expected):
    true, distractor = ("cube", "sphere") if "cup" not in answer else ("cup", "coffee cup")
    assert match_answer(answer, true, distractor) == expected


class PlantedLMM:
    """Prefers whichever option the question lists first, and answers with it."""

    def option_logprobs(self, images, questions, options, batch_size=16):
        firsts = [q.split("list: ")[1].split(", ")[0] for q in questions]
        return np.array([[0.0 if o == f else -1.0 for o in opts] for f, opts in zip(firsts, options)])

    def generate(self, images, questions, max_new_tokens=16, batch_size=16):
        return [q.split("list: ")[1].split(", ")[0] for q in questions]

    def answer(self, images, questions, options, max_new_tokens=16, batch_size=16):
        return self.option_logprobs(images, questions, options), self.generate(images, questions)


def test_protocol_exposes_a_first_option_bias_as_chance_accuracy():
    """With balanced order, a model that always picks the first option scores exactly 0.5, and 1.0
    on true-first items: the reference's always-true-first order would have scored it 1.0."""
    labels = np.repeat(np.arange(4), 10)
    logits = np.random.default_rng(0).normal(size=(40, 4))
    out = run_protocol(PlantedLMM(), [None] * 40, labels, logits, ("cube", "sphere", "cone", "torus"), seed=0)
    assert out.loglik_correct.mean() == 0.5 and (out.generated == 1).mean() == 0.5
    assert out.loglik_correct[out.true_first].all() and not out.loglik_correct[~out.true_first].any()
    np.testing.assert_array_equal(out.clip_correct, logits.argmax(1) == labels)


# ------------------------------------------------------------------------------------ embedded LMM

def test_embedded_lmm_is_built_on_rn_clip_and_reproduces_its_accuracy():
    from clip_robustness.fixtures import zoo
    from clip_robustness.fixtures.lmm.adapter import EMBEDDED_DIR
    from clip_robustness.fixtures.lmm.world_llava import measure

    record = json.loads((EMBEDDED_DIR / "world-llava" / "lmm.json").read_text())
    assert record["tower"] == "embedded:rn-clip" and record["tower_sha256"] == zoo.get("rn-clip").sha256
    lmm = load_lmm(parse_lmm_spec("embedded"))
    clip_visual = zoo_visual_state("rn-clip")
    tower = lmm.model.model.vision_tower.visual.state_dict()
    assert all(np.allclose(tower[k].numpy(), v.numpy(), atol=1e-3) for k, v in clip_visual.items())
    got = measure("world-llava", n=100)["test"]
    recorded = record["recorded"]["test"]
    # 100 of the recorded 500 items: within 0.15 of the recorded accuracies (binomial sd <= 0.05)
    for key in ("clip_two_way", "lmm_loglik"):
        assert abs(got[key] - recorded[key]) <= 0.15, (key, got, recorded)


def zoo_visual_state(name: str) -> dict:
    from safetensors.torch import load_file

    from clip_robustness.fixtures import zoo

    state = load_file(str(zoo.get(name).checkpoint))
    return {k[len("visual."):]: v.float() for k, v in state.items() if k.startswith("visual.")}


# ---------------------------------------------------------------------------------------- harness

def test_harness_measures_an_lmm_and_reports_rows(run_harness, tmp_path):
    folder = tiny_llava(tmp_path / "tiny-oc", tower="open_clip")
    report = tmp_path / "rep"
    result = run_harness(str(Path(__file__).parents[1] / "robustness_tests" / "test_lmm.py"), "--model", RANDOM_MODEL,
                         f"--lmm={folder}", "--limit", "12", f"--report-dir={report}", "-q")
    result.assert_outcomes(passed=5, skipped=1)
    rows = json.loads((report / "robustness.json").read_text())["results"]
    metrics = {r["metric"] for r in rows}
    assert metrics == {"lmm_accuracy", "clip_two_way_accuracy", "lmm_gain", "answer_unmatched"}
    assert {r["model"] for r in rows} == {RANDOM_MODEL} and all(f"lmm={folder}" in r["condition"] for r in rows)
    assert "LMM" in (report / "robustness.html").read_text()


def test_harness_says_why_no_lmm_runs(run_harness, tmp_path):
    result = run_harness(str(Path(__file__).parents[1] / "robustness_tests" / "test_lmm.py"), "--model", RANDOM_MODEL,
                         "-k", "world", "-rs", f"--report-dir={tmp_path}")
    result.assert_outcomes(skipped=5)  # one per world split
    result.stdout.fnmatch_lines(["*no LMM to measure: pass --lmm SPEC*"])


def test_bad_lmm_option_is_a_usage_error(run_harness, tmp_path):
    result = run_harness(str(Path(__file__).parents[1] / "robustness_tests" / "test_lmm.py"), "--model", RANDOM_MODEL,
                         "--lmm", "embedded:nope", f"--report-dir={tmp_path}")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*no embedded LMM 'nope'*"])


def test_unusable_or_foreign_tower_spec_is_refused_at_start(run_harness, tmp_path):
    """A ;tower= that names no model, or another CLIP than the one the LMM records it was built on (its rows
    were filed under that other CLIP), stops the run before anything loads."""
    suite = str(Path(__file__).parents[1] / "robustness_tests" / "test_lmm.py")
    result = run_harness(suite, "--model", RANDOM_MODEL, "--lmm", "embedded;tower=nosuch:x", "-k", "test]",
                         f"--report-dir={tmp_path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--lmm 'embedded;tower=nosuch:x': its ;tower= is not a usable model spec: "
                                 "*unknown open_clip architecture*"])
    result = run_harness(suite, "--model", "embedded:rn-clip", "--lmm", "embedded;tower=embedded:vit-clip",
                         f"--report-dir={tmp_path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--lmm 'embedded;tower=embedded:vit-clip': this LMM records that its vision tower "
                                 "is embedded:rn-clip, but ;tower= names embedded:vit-clip; drop ;tower=*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_lmm_on_a_real_imagenet_d_folder_with_the_reference_class_names(run_harness, tmp_path):
    """Real images arrive as writable arrays (a read-only one makes torch warn, which fails a run with
    warnings as errors), and ImageNet-D's class names with parentheses and the reference's '/' pass through the
    conditions (tests/test_conditions.py escapes '=' and ';')."""
    from PIL import Image

    from clip_robustness.fixtures.conditions import parse_condition

    root = tmp_path / "ImageNet-D"
    rng = np.random.default_rng(0)
    for k, folder in enumerate(["backpack", "coffee_or_french_press", "laptop_open"]):
        for i in range(2):
            path = root / "background" / folder / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    folder = tiny_llava(tmp_path / "tiny-oc", tower="open_clip")
    report = tmp_path / "rep"
    result = run_harness(str(Path(__file__).parents[1] / "robustness_tests" / "test_lmm.py"), "--model", RANDOM_MODEL,
                         f"--lmm={folder}", f"--data=imagenet-d={root}", "-k", "test_lmm_real", f"--report-dir={report}",
                         "-W", "error::UserWarning", "-q")
    result.assert_outcomes(passed=1, deselected=5)
    rows = json.loads((report / "robustness.json").read_text())["results"]
    classes = {parse_condition(r["condition"]).get("class") for r in rows} - {None}
    assert classes == {"backpack", "coffee or french press", "laptop (open)"}
    assert {r["dataset"] for r in rows} == {"imagenet-d:background"}


def test_demonstration_lmm_refuses_the_seed_of_its_own_training_scenes(run_harness, tmp_path):
    """world-llava-outside was trained on shift-split scenes drawn with its outside_seed: measured with that
    --seed it would be graded on its own training data, a gain that is not one. The test fails in one sentence."""
    result = run_harness(str(Path(__file__).parents[1] / "robustness_tests" / "test_lmm.py"), "--model",
                         "embedded:rn-clip", "--lmm", "embedded:world-llava-outside", "--seed", "999", "--limit", "8",
                         "-k", "world and shift-background", f"--report-dir={tmp_path / 'rep'}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*embedded:world-llava-outside was trained on shift-background scenes drawn with "
                                 "seed 999, so --seed 999 would measure it on its own training data; use another --seed*"])
    assert "Traceback" not in result.stdout.str()
