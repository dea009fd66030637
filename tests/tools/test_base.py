"""The Tool abstraction: schemas from signatures, validation, errors as results, the action schema and parser."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from strop.tools import BUILTIN_TOOLS, Tool, ToolError, action_schema, calculator, parse_action, think, tool
from strop.tools.base import SCHEMA_KEYWORDS


@tool
def search(query: Annotated[str, Field(pattern=r"^[a-z ]+$", max_length=40)], k: int = 3,
           mode: Literal["fast", "exact"] = "fast") -> str:
    """Search the notes for a query.

    Longer explanation that is not part of the description.

    Args:
        query: what to look for,
            in lower case.
        k (int): how many hits.
    """
    return f"{k} hits for {query!r} ({mode})"


class Unit(Enum):
    METRE = "m"
    FOOT = "ft"


class Point(BaseModel):
    x: int
    title: str  # a property named like a keyword pydantic adds, which must survive cleaning


@tool(name="plot-point", max_result_chars=20)
def plot(point: Point, unit: Unit = Unit.METRE, label: str | None = None) -> str:
    """Plot a point."""
    return f"plotted {point.x} {unit.value} {label}" * 3


def keys(schema: object) -> set[str]:
    """Every keyword used anywhere in a schema (property names excluded)."""
    if isinstance(schema, list):
        return set().union(*map(keys, schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for key, value in schema.items():
        if key == "properties":
            found |= set().union(*map(keys, value.values())) if value else set()
        elif key != "enum":
            found |= keys(value)
    return found


# --- @tool and the arguments' schema ----------------------------------------------------------------------------------

def test_tool_takes_name_and_first_paragraph_of_the_docstring():
    assert search.name == "search"
    assert search.description == "Search the notes for a query."


def test_args_schema_from_signature_is_closed_and_requires_what_has_no_default():
    schema = search.args_schema()
    assert schema == {
        "type": "object",
        "properties": {
            "query": {"type": "string", "pattern": "^[a-z ]+$", "maxLength": 40,
                      "description": "what to look for, in lower case."},
            "k": {"type": "integer", "description": "how many hits."},
            "mode": {"type": "string", "enum": ["fast", "exact"]},
        },
        "required": ["query"],
        "additionalProperties": False,
    }


def test_args_schema_inlines_models_and_enums_and_keeps_only_supported_keywords():
    schema = plot.args_schema()
    point = schema["properties"]["point"]
    assert point["properties"] == {"x": {"type": "integer"}, "title": {"type": "string"}}
    assert point["required"] == ["x", "title"] and point["additionalProperties"] is False
    assert schema["properties"]["unit"] == {"type": "string", "enum": ["m", "ft"]}
    assert schema["properties"]["label"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    for t in (search, plot, *BUILTIN_TOOLS):
        assert keys(t.args_schema()) <= SCHEMA_KEYWORDS, t.name
        assert "$defs" not in json.dumps(t.args_schema())


def test_explicit_field_description_wins_over_the_docstring():
    @tool
    def greet(name: Annotated[str, Field(description="who")]) -> str:
        """Greet.

        Args:
            name: ignored, the Field says it.
        """
        return f"hello {name}"

    assert greet.args_schema()["properties"]["name"]["description"] == "who"


def test_decorated_function_stays_callable():
    assert search("cats", k=1) == "1 hits for 'cats' (fast)"


@pytest.mark.parametrize(("source", "message"), [
    ("def f(x: int) -> str:\n    return ''", "needs a docstring"),
    ("def f(x) -> str:\n    '''Doc.'''", "parameter 'x' needs a type hint"),
    ("def f(*xs: int) -> str:\n    '''Doc.'''", "parameter 'xs' must be a named parameter"),
])
def test_tool_refuses_functions_it_cannot_describe(source, message):
    namespace: dict = {}
    exec(source, namespace)  # builds the ill-formed function under test
    with pytest.raises(TypeError, match=message):
        tool(namespace["f"])


def test_tool_names_must_suit_openai():
    with pytest.raises(ValueError, match="tool name 'two words'"):
        Tool("two words", "d", Point, str)


def test_a_tool_can_be_a_closure_over_state():
    notes: list[str] = []

    def remember(text: str) -> str:
        """Store a note."""
        notes.append(text)
        return f"stored note {len(notes)}"

    remember_tool = tool(remember, name="remember")
    assert remember_tool.run({"text": "water boils at 100 C"}) == "stored note 1"
    assert notes == ["water boils at 100 C"]


# --- run --------------------------------------------------------------------------------------------------------------

def test_run_validates_and_honours_defaults():
    assert search.run({"query": "cats"}) == "3 hits for 'cats' (fast)"
    assert search.run({"query": "dogs", "k": 5, "mode": "exact"}) == "5 hits for 'dogs' (exact)"
    assert search.run({"query": "dogs", "k": "5"}) == "5 hits for 'dogs' (fast)"  # lax mode, as JSON models write


def test_run_builds_nested_models():
    assert plot.run({"point": {"x": 1, "title": "a"}, "unit": "ft"}).startswith("plotted 1 ft")


@pytest.mark.parametrize(("args", "message"), [
    ({}, "invalid arguments for search: missing argument 'query'"),
    ({"query": "Cats!"}, "argument 'query' = 'Cats!': String should match pattern '^[a-z ]+$'"),
    ({"query": "a" * 41}, "argument 'query' = 'aaaa"),
    ({"query": "a", "k": "many"}, "argument 'k' = 'many': Input should be a valid integer"),
    ({"query": "a", "mode": "slow"}, "argument 'mode' = 'slow': Input should be 'fast' or 'exact'"),
    ({"query": "a", "limit": 2}, "unexpected argument 'limit' (allowed: query, k, mode)"),
    (["cats"], "the arguments of search must be a JSON object, not an array"),
])
def test_validation_errors_name_the_field_and_the_problem(args, message):
    with pytest.raises(ToolError) as info:
        search.run(args)
    assert message in str(info.value)


def test_validation_errors_name_nested_fields():
    with pytest.raises(ToolError, match=r"argument 'point\.x' = 'one'"):
        plot.run({"point": {"x": "one", "title": "a"}})


def test_exceptions_inside_a_tool_become_tool_errors():
    @tool
    def broken(n: int) -> str:
        """Fail."""
        return str(1 / n)

    with pytest.raises(ToolError, match="broken failed: ZeroDivisionError: division by zero") as info:
        broken.run({"n": 0})
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_tool_errors_inside_a_tool_pass_through_unchanged():
    @tool
    def picky(n: int) -> str:
        """Refuse."""
        raise ToolError(f"n must be even, got {n}")

    with pytest.raises(ToolError) as info:
        picky.run({"n": 3})
    assert str(info.value) == "n must be even, got 3"


def test_results_are_strings_capped_at_max_result_chars():
    result = plot.run({"point": {"x": 1, "title": "a"}})
    assert result.startswith("plotted 1") and result.endswith("[truncated 28 characters]")
    assert len(result.split("…")[0]) == 20

    @tool
    def number() -> str:
        """A number."""
        return 42  # type: ignore[return-value]

    assert number.run({}) == "42"
    assert number.args_schema() == {"type": "object", "properties": {}, "required": [], "additionalProperties": False}


def test_to_openai_is_a_function_tool():
    assert calculator.to_openai() == {"type": "function", "function": {
        "name": "calculator", "description": calculator.description, "parameters": calculator.args_schema()}}


# --- the built-in tools -----------------------------------------------------------------------------------------------

def test_think_acknowledges_and_refuses_empty_thoughts():
    assert think.run({"thought": "7 * 6 first, then add 1"}).startswith("Noted")
    with pytest.raises(ToolError, match="argument 'thought' = ''"):
        think.run({"thought": ""})


def test_builtin_tools_are_think_and_calculator():
    assert [t.name for t in BUILTIN_TOOLS] == ["think", "calculator"]


# --- the action schema and parser -------------------------------------------------------------------------------------

TOOLS = (think, calculator, search)


def test_action_schema_is_one_object_per_tool_with_its_args():
    schema = action_schema(TOOLS)
    assert [branch["properties"]["tool"] for branch in schema["anyOf"]] == [
        {"const": "think"}, {"const": "calculator"}, {"const": "search"}]
    assert schema["anyOf"][1] == {"type": "object",
                                  "properties": {"tool": {"const": "calculator"}, "args": calculator.args_schema()},
                                  "required": ["tool", "args"], "additionalProperties": False}


@pytest.mark.parametrize(("action", "valid"), [
    ({"tool": "calculator", "args": {"expression": "(914 - 186) * 3"}}, True),
    ({"tool": "think", "args": {"thought": "plan"}}, True),
    ({"tool": "search", "args": {"query": "cats", "k": 2, "mode": "exact"}}, True),
    ({"tool": "search", "args": {"query": "cats"}}, True),  # the arguments with a default may be left out
    ({"tool": "search", "args": {"k": 2}}, False),  # the one without may not
    ({"tool": "calculator", "args": {"thought": "plan"}}, False),  # another tool's args
    ({"tool": "calculator", "args": {"expression": "__import__('os')"}}, False),
    ({"tool": "calculator", "args": {"expression": "1" * 301}}, False),
    ({"tool": "calculator", "args": {"expression": "1+1"}, "extra": 1}, False),
    ({"tool": "shell", "args": {"cmd": "ls"}}, False),
    ({"tool": "think"}, False),
])
def test_action_schema_accepts_exactly_the_valid_actions(action, valid):
    errors = list(jsonschema.Draft202012Validator(action_schema(TOOLS)).iter_errors(action))
    assert (not errors) == valid


def test_action_schema_refuses_no_tools_or_duplicate_names():
    with pytest.raises(ValueError, match="at least one tool"):
        action_schema([])
    with pytest.raises(ValueError, match="unique"):
        action_schema([think, think])


def test_action_schema_compiles_in_xgrammar_and_constrains_generation():
    """vLLM's structured-output backend builds a grammar from the schema; it must accept good actions only."""
    xgr = pytest.importorskip("xgrammar")
    accepts = getattr(getattr(xgr, "testing", None), "_is_grammar_accept_string", None)
    if accepts is None:
        pytest.skip("this xgrammar has no testing helper")
    grammar = xgr.Grammar.from_json_schema(json.dumps(action_schema(TOOLS)), any_whitespace=False)
    assert accepts(grammar, '{"tool": "calculator", "args": {"expression": "3 × (4 + 5)"}}')
    assert accepts(grammar, '{"tool": "think", "args": {"thought": "first add"}}')
    assert not accepts(grammar, '{"tool": "calculator", "args": {"expression": "os.system"}}')
    assert not accepts(grammar, '{"tool": "calculator", "args": {"thought": "x"}}')
    assert not accepts(grammar, '{"tool": "bash", "args": {}}')


def test_parse_action_returns_the_tool_and_its_args():
    tool_, args = parse_action('{"tool": "calculator", "args": {"expression": "1 + 2"}}', TOOLS)
    assert tool_ is calculator and args == {"expression": "1 + 2"}
    assert tool_.run(args) == "3"


def test_parse_action_tolerates_a_code_fence_and_missing_args():
    assert parse_action('```json\n{"tool": "think", "args": {"thought": "x"}}\n```', TOOLS)[1] == {"thought": "x"}
    assert parse_action('{"tool": "think"}', TOOLS) == (think, {})


@pytest.mark.parametrize(("text", "message"), [
    ('{"tool": "calculator", "args": {"expression": "1+', "the action is not valid JSON (Unterminated string"),
    ("", "the action is not valid JSON (Expecting value at column 1)"),
    ('["calculator"]', "the action must be a JSON object, not an array"),
    ('{"tool": "bash", "args": {}}', 'unknown tool "bash"; known tools: think, calculator, search'),
    ('{"args": {}}', "no tool name; known tools: think, calculator, search"),
    ('{"tool": ["think"], "args": {}}', 'unknown tool ["think"]; known tools'),
    ('{"tool": "think", "args": "hello"}', '"args" of think must be a JSON object, not a string'),
    ('{"tool": "think", "args": null}', '"args" of think must be a JSON object, not null'),
])
def test_parse_action_errors_are_clear(text, message):
    with pytest.raises(ToolError) as info:
        parse_action(text, TOOLS)
    assert message in str(info.value)


def test_unresolvable_type_hints_are_a_clear_type_error():
    def f(x: NotDefinedAnywhere) -> str:  # noqa: F821
        """Doc."""
        return ""

    with pytest.raises(TypeError, match="cannot resolve a type hint"):
        tool(f)
