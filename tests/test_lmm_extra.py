"""transformers is the ``lmm`` extra (issue 15): without it the lmm tests fail with one sentence that names the
extra, the report lists it as the LMM's load failure, and the other properties still run."""
from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import RANDOM_MODEL

SUITE = Path(__file__).resolve().parents[1] / "robustness_tests"
NO_TRANSFORMERS = '''
import sys

sys.modules["transformers"] = None  # import transformers now fails, as where the lmm extra is not installed
'''
OTHER_PROPERTY = '''
import pytest

pytestmark = pytest.mark.calibration

def test_cell(record):
    record("ece", 0.03, dataset="synthetic", model="m")
'''


def test_lmm_without_transformers_fails_with_the_extra_named(pytester, run_harness):
    pytester.makeconftest(NO_TRANSFORMERS)
    pytester.makepyfile(test_lmm=(SUITE / "test_lmm.py").read_text(), test_other=OTHER_PROPERTY)
    result = run_harness("--model", RANDOM_MODEL, "--lmm", "embedded", "-k", "test] or test_cell")
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    assert "Traceback" not in out
    sentence = ("--lmm 'embedded': the lmm property needs transformers, which cannot be imported (import of "
                "transformers halted; None in sys.modules); install the lmm extra: "
                "pip install 'clip-robustness-gate[lmm]'")
    assert sentence in out
    data = json.loads((pytester.path / "reports" / "robustness.json").read_text())
    assert [(p["kind"], p["model"], p["message"]) for p in data["run"]["problems"]] == [("load", "embedded", sentence)]
    assert [r["metric"] for r in data["results"]] == ["ece"]
