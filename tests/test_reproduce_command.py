"""The report's "reproduce this run" command (issue 15): every option that changed the result, one shell word
``--option=VALUE`` each, and read back by pytest and the plugin it gives the same run configuration."""
from __future__ import annotations

import json
import shlex

import pytest

from clip_robustness.plugins.html import reproduce_command
from clip_robustness.plugins.robustness import RB_CONFIG


def configured(pytester: pytest.Pytester, args: list[str]) -> dict:
    """The run configuration the plugin builds from ``args`` (as ``pytest ARGS`` would), as the report stores it."""
    return pytester.parseconfigure(*args).stash[RB_CONFIG].to_json()


def test_the_command_rebuilds_the_run_config(pytester: pytest.Pytester):
    root = pytester.path
    for cls in ("cat", "dog"):
        (root / "my data" / cls).mkdir(parents=True)  # spaces in every path: each must stay one word
    (root / "class names.txt").write_text("a cat\na dog\n")
    (root / "my prompts.txt").write_text("a photo of a {c}.\na drawing of a {c}.\n")
    (root / "gate rules.toml").write_text('[[thresholds]]\nproperty = "accuracy"\nmetric = "top1"\nmin = 0.1\n')
    (root / "old run.json").write_text(json.dumps({"run": {}, "results": [
        {"property": "accuracy", "model": "embedded:vit-clip", "dataset": "world:test", "condition": "",
         "metric": "top1", "value": 0.5}]}))
    files = f"classnames={root / 'class names.txt'};templates={root / 'my prompts.txt'}"
    data = f"imagefolder:pets={root / 'my data'};{files}"
    argv = ["--model", "embedded:rn-clip", "--model=embedded:rn-siglip", "--data", data,
            "--templates", "single", "--templates", str(root / "my prompts.txt"), "--lmm", "embedded",
            "--thresholds", str(root / "gate rules.toml"), "--baseline", str(root / "old run.json"),
            "--baseline-model", "embedded:rn-clip=embedded:vit-clip", "--report-dir", str(root / "out dir"),
            "--limit", "7", "--seed", "11", "--device", "cpu", "--precision", "fp32", "--batch-size", "5",
            "--threads", "1", "--shard", "2/3", "--embedding-cache", str(root / "emb cache"), "--rb-strict"]
    first = configured(pytester, argv)
    assert first["thresholds_file"] and first["lmms"] and first["baseline_models"] and first["data_options"]

    command = reproduce_command(first)
    words = shlex.split(command)
    assert words[0] == "pytest"
    assert all(w.startswith("--") and ("=" in w or w == "--strict") for w in words[1:]), command
    assert f"--report-dir={root / 'out dir'}" in words  # never "--report-dir PATH": pytest would collect PATH
    assert configured(pytester, words[1:]) == first


def test_defaults_and_an_older_report(pytester: pytest.Pytester):
    config = configured(pytester, ["--model=embedded:rn-clip", "--embedding-cache=off"])
    words = shlex.split(reproduce_command(config))
    assert "--embedding-cache=off" in words
    assert not any(w.startswith(("--threads", "--limit", "--shard", "--thresholds")) for w in words)
    assert configured(pytester, words[1:]) == config
    # a report written before these options were recorded: the command holds what it has
    older = {"models": ["embedded:rn-clip"], "report_dir": "reports", "seed": 0, "device": "cpu", "strict": True}
    assert reproduce_command(older) == ("pytest --model=embedded:rn-clip --report-dir=reports --seed=0 --device=cpu "
                                        "--strict")
