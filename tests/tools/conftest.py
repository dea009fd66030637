"""Shared fixtures for the tool tests."""

import json

import pytest

from strop.tools.base import action_schema


@pytest.fixture
def grammar_accepts():
    """``check(tools, text)``: whether xgrammar, vLLM's structured-output backend, lets the model write ``text`` as
    an action of ``tools`` (skipped without xgrammar or its testing helper)."""
    xgr = pytest.importorskip("xgrammar")
    accepts = getattr(getattr(xgr, "testing", None), "_is_grammar_accept_string", None)
    if accepts is None:
        pytest.skip("this xgrammar has no testing helper")

    def check(tools, text: str) -> bool:
        return accepts(xgr.Grammar.from_json_schema(json.dumps(action_schema(tools)), any_whitespace=False), text)

    return check
