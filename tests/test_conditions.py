"""Condition strings: canonical, escaped (never rejected), and parsed back by the one parser."""
from __future__ import annotations

from hypothesis import given, strategies as st

from clip_robustness.fixtures.conditions import condition, join_condition, parse_condition

KEYS = st.text(st.characters(blacklist_characters="%;=", blacklist_categories=("Cs",)), min_size=1, max_size=8)
VALUES = st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
                   st.sampled_from(["a=b", "x;y", "%3D", "50%", "=;%", ""]), st.integers())


@given(st.dictionaries(KEYS, VALUES, max_size=5))
def test_condition_round_trips_any_value(parts):
    text = condition(**parts)
    assert parse_condition(text) == {k: str(v) for k, v in parts.items()}
    assert join_condition(parse_condition(text)) == text  # canonical: one spelling per condition


def test_syntax_characters_in_a_class_name_are_escaped():
    text = condition(lmm="m", **{"class": "cup=mug;50%"})
    assert text == "class=cup%3Dmug%3B50%25;lmm=m"
    assert parse_condition(text)["class"] == "cup=mug;50%"


def test_the_html_report_uses_the_same_parser():
    import importlib
    import pkgutil

    import clip_robustness.plugins.html as html

    modules = [importlib.import_module(f"{html.__name__}.{m.name}") for m in pkgutil.iter_modules(html.__path__)]
    parsers = {m.__name__: (vars(m).get("parse_condition"), vars(m).get("join_condition")) for m in modules}
    assert any(p is parse_condition for p, _ in parsers.values())  # the report does parse conditions
    for name, (parse, join) in parsers.items():
        assert parse in (None, parse_condition) and join in (None, join_condition), name
