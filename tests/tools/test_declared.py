"""Tools declared in JSON (BFCL cases): their schema, the bounds on open-ended values, and validation."""

import json

import pytest

from strop.tools.base import ToolError
from strop.tools.declared import MAX_INTEGER, MAX_ITEMS, MAX_TEXT, declared_tool

RECIPE = {"name": "recipes.vegan", "description": "Find a vegan recipe.", "parameters": {
    "type": "dict", "required": ["dish_type"], "properties": {
        "dish_type": {"type": "string", "enum": ["dessert", "main"]},
        "ingredients": {"type": "array", "items": {"type": "string"}},
        "unit": {"type": "string"},
        "note": {"type": "string", "maxLength": 20},
        "cooking_time": {"type": "integer"}, "servings": {"type": "integer", "minimum": 1}}}}


def test_a_declared_function_is_a_tool_under_a_callable_name_that_acknowledges_calls():
    tool = declared_tool(RECIPE)
    assert tool.name == "recipes_vegan"
    assert tool.run({"dish_type": "main", "cooking_time": 20}) == \
        'recipes_vegan called with {"dish_type": "main", "cooking_time": 20}.'


def test_open_ended_strings_and_lists_are_bounded_and_declared_bounds_kept():
    props = declared_tool(RECIPE).args_schema()["properties"]
    ingredients = props["ingredients"]["anyOf"][0]
    assert ingredients["maxItems"] == MAX_ITEMS and ingredients["items"]["maxLength"] == MAX_TEXT
    assert props["unit"]["anyOf"][0]["maxLength"] == MAX_TEXT
    assert props["note"]["anyOf"][0]["maxLength"] == 20  # the declaration's own bound
    assert props["dish_type"]["enum"] == ["dessert", "main"] and "maxLength" not in props["cooking_time"]["anyOf"][0]
    assert props["cooking_time"]["anyOf"][0] == {"type": "integer", "minimum": -MAX_INTEGER,
                                                      "maximum": MAX_INTEGER}
    assert props["servings"]["anyOf"][0]["minimum"] == 1  # the declaration's own limit


def test_an_unexpected_argument_is_named_with_the_declared_names_allowed():
    with pytest.raises(ToolError, match=r"unexpected argument 'colour' \(allowed: dish_type, ingredients, unit, "):
        declared_tool(RECIPE).run({"dish_type": "main", "colour": "red"})


def test_a_runaway_value_is_refused_by_validation_with_the_field_named():
    tool = declared_tool(RECIPE)
    with pytest.raises(ToolError, match="ingredients"):
        tool.run({"dish_type": "main", "ingredients": ["chicken"] * (MAX_ITEMS + 1)})
    with pytest.raises(ToolError, match="unit"):
        tool.run({"dish_type": "main", "unit": "unit_value_10_" * 20})
    with pytest.raises(ToolError, match="cooking_time"):
        tool.run({"dish_type": "main", "cooking_time": 10 ** 40})


def test_the_grammar_ends_a_runaway_list_or_integer_where_the_bound_is(grammar_accepts):
    def accepts(text: str) -> bool:
        return grammar_accepts([declared_tool(RECIPE)], text)

    def action(items: int, minutes: int = 100) -> str:
        args = {"dish_type": "dessert", "ingredients": ["chicken"] * items, "unit": None, "note": None,
                "cooking_time": minutes, "servings": None}
        return json.dumps({"tool": "recipes_vegan", "args": args})

    assert accepts(action(3)) and accepts(action(MAX_ITEMS))
    assert not accepts(action(MAX_ITEMS + 1))
    assert accepts(action(3, MAX_INTEGER)) and not accepts(action(3, 10 * MAX_INTEGER))


def test_the_grammar_lets_optional_arguments_be_left_out_and_required_ones_not(grammar_accepts):
    def accepts(args: dict) -> bool:
        return grammar_accepts([declared_tool(RECIPE)], json.dumps({"tool": "recipes_vegan", "args": args}))

    assert accepts({"dish_type": "main"}) and accepts({"dish_type": "main", "servings": 2})
    assert accepts({"dish_type": "main", "unit": None})  # null still means "not given"
    assert not accepts({"servings": 2})  # dish_type is required
    assert not accepts({"dish_type": "main", "colour": "red"})  # nothing undeclared


QUERY = {"name": "database.query", "description": "Query a table.", "parameters": {
    "type": "dict", "required": ["table", "conditions"], "properties": {
        "table": {"type": "string"},
        "conditions": {"type": "array", "items": {"type": "dict", "required": ["field", "value"], "properties": {
            "field": {"type": "string"}, "op": {"type": "string", "enum": ["<", ">", "="]},
            "value": {"type": "string"}}}}}}}


def test_an_object_argument_with_declared_keys_is_closed_and_acknowledged_by_its_declared_names():
    tool = declared_tool(QUERY)
    item = tool.args_schema()["properties"]["conditions"]["items"]
    assert list(item["properties"]) == ["field", "op", "value"] and item["required"] == ["field", "value"]
    assert item["additionalProperties"] is False and item["properties"]["op"]["anyOf"][0]["enum"] == ["<", ">", "="]
    assert tool.run({"table": "user", "conditions": [{"field": "age", "op": ">", "value": "25"}]}) == \
        'database_query called with {"table": "user", "conditions": [{"field": "age", "op": ">", "value": "25"}]}.'
    with pytest.raises(ToolError, match=r"missing argument 'conditions.0.field'; "
                                        r"unexpected argument 'conditions.0.name'$"):
        tool.run({"table": "user", "conditions": [{"name": "age", "value": "25"}]})


@pytest.mark.parametrize("spec, message", [
    ({"description": "no name"}, "needs a string 'name'"),
    ({"name": "f", "parameters": {"properties": []}}, "'parameters' must be an object"),
    ({"name": "f", "parameters": {"properties": {"x": "string"}}}, "parameter 'x' must be declared as an object"),
])
def test_bad_declarations_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        declared_tool(spec)
