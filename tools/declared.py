"""Tools declared in JSON (OpenAI function definitions, or BFCL's variant) instead of written in Python.

Evaluation data such as BFCL gives each case the functions the model may call, as JSON. Such a tool has
no implementation: calling it only acknowledges the call, and a grader checks the call's name and
arguments in the trajectory. Dotted names (``math.hypot``) become ``math_hypot``, since function names
may only hold letters, digits, ``_`` and ``-``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from strop.tools.base import Tool, _camel

# Bounds on declared values that the declaration leaves open. Without them a small model's runaway value (a list
# repeating one item, a string repeating a phrase, an integer of hundreds of digits) fills an action's whole token
# budget, is cut off as invalid JSON and is written again in the next step. They sit far above what calls need
# (BFCL's gold calls: lists of at most 7 items, strings of at most 54 characters, integers below 10**9). Numbers
# with a fraction stay open: xgrammar's bounded numbers allow no exponent (BFCL's gold has 1e-09).
MAX_TEXT = 200  # characters of a declared string
MAX_ITEMS = 16  # items of a declared array
MAX_INTEGER = 10**15  # magnitude of a declared integer

# BFCL writes Python type names where JSON Schema has its own.
_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "float": float, "boolean": bool,
                          "array": list, "tuple": list, "dict": dict, "object": dict, "any": Any}


def tool_name(name: str) -> str:
    """The name a declared function is called by: characters outside ``[A-Za-z0-9_-]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]


def declared_tool(spec: dict[str, Any]) -> Tool:
    """A :class:`Tool` for a function declared as ``{"name", "description", "parameters"}``.

    Raises:
        ValueError: naming what is wrong with the declaration.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise ValueError("a declared function needs a string 'name'")
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict) or not isinstance(parameters.get("properties", {}), dict):
        raise ValueError(f"function {spec['name']!r}: 'parameters' must be an object with 'properties'")
    name = tool_name(spec["name"])
    model = _object_model(name, f"{_camel(name)}Args", parameters)

    def acknowledge(**args: Any) -> str:  # the validated values again, by their declared names, unset ones left out
        given = model.model_construct(**args).model_dump(by_alias=True, exclude_none=True)
        return f"{name} called with {json.dumps(given, default=str)}."

    return Tool(name, str(spec.get("description", "")).strip() or name, model, acknowledge)


def _object_model(function: str, model_name: str, schema: dict[str, Any]) -> type[BaseModel]:
    """A closed pydantic model of a declared object's properties (the arguments, or an argument that is an object)."""
    required = set(schema.get("required", ()))
    # Fields are named p0, p1, ... with the declared names as aliases: a declared name may be anything
    # JSON allows ("_id", "schema"), which pydantic would refuse as an attribute name.
    props = list(schema.get("properties", {}).items())
    fields = {f"p{i}": _field(function, f"{model_name}_{i}", prop, sub, prop in required)
              for i, (prop, sub) in enumerate(props)}
    return create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)


def _field(function: str, model_name: str, prop: str, schema: Any, required: bool) -> tuple[Any, Any]:
    if not isinstance(schema, dict):
        raise ValueError(f"function {function!r}: parameter {prop!r} must be declared as an object")
    annotation = _annotation(function, model_name, schema)
    description = str(schema.get("description", ""))[:300] or None
    if required:
        return annotation, Field(alias=prop, description=description)
    return annotation | None, Field(None, alias=prop, description=description)


def _annotation(function: str, model_name: str, schema: dict[str, Any]) -> Any:
    if isinstance(schema.get("enum"), list) and schema["enum"] and all(
            isinstance(v, str | int | float | bool) for v in schema["enum"]):
        return Literal[tuple(schema["enum"])]
    kind = _TYPES.get(schema.get("type", "any"), Any)
    if kind is list:
        items = _annotation(function, model_name, schema["items"]) if isinstance(schema.get("items"), dict) else Any
        return Annotated[list[items], Field(max_length=_bound(schema, "maxItems", MAX_ITEMS))]
    if kind is str:
        return Annotated[str, Field(max_length=_bound(schema, "maxLength", MAX_TEXT))]
    if kind is int:
        return Annotated[int, Field(ge=_limit(schema, "minimum", -MAX_INTEGER),
                                    le=_limit(schema, "maximum", MAX_INTEGER))]
    if kind is dict and isinstance(schema.get("properties"), dict) and schema["properties"]:
        return _object_model(function, model_name, schema)  # its keys declared: the grammar writes them
    if kind is dict:
        return dict[str, Any]
    return kind


def _limit(schema: dict[str, Any], keyword: str, default: int) -> int:
    """The declaration's own integer limit when it gives one, else ``default``."""
    limit = schema.get(keyword)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else default


def _bound(schema: dict[str, Any], keyword: str, default: int) -> int:
    """The declaration's own size bound when it gives a sensible one (a count, not negative), else ``default``."""
    bound = _limit(schema, keyword, default)
    return bound if bound >= 0 else default
