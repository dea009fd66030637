"""The tool abstraction: a typed function the agent can call with JSON arguments.

A :class:`Tool` pairs a function with a pydantic model of its arguments. The arguments' JSON schema is what
vLLM's structured output enforces, so even a small model emits a well-formed call; :meth:`Tool.run` validates
again and turns every failure into a :class:`ToolError`, whose message the model reads as the tool result.

    @tool
    def add(a: int, b: int = 1) -> str:
        '''Add two integers.'''
        return str(a + b)

Tools that need state (memory, the graph) are closures: ``tool(make_search(store), name="search_memory")``.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

DEFAULT_MAX_RESULT_CHARS = 4000

# The JSON-schema keywords xgrammar (vLLM's structured-output backend) understands; others are dropped from
# args_schema() and enforced only by validation in Tool.run.
SCHEMA_KEYWORDS = frozenset({
    "type", "properties", "required", "enum", "const", "pattern", "minLength", "maxLength", "minimum", "maximum",
    "items", "minItems", "maxItems", "anyOf", "description", "additionalProperties",
})
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what OpenAI function names allow
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


class ToolError(Exception):
    """A tool failure whose message is shown to the model as the tool result; never a crash of the agent."""


@dataclass(frozen=True)
class Tool:
    """A named function with typed arguments, callable by the model through a JSON action."""

    name: str
    description: str
    args_model: type[BaseModel]
    fn: Callable[..., str]
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS
    # How close the tool's data comes to a question (a memory search: the best passage's cosine), when the
    # tool can tell; the agent graph uses it to look things up before answering.
    relevance: Callable[[str], float] | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'")

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        """Call the underlying function directly (no validation), so a decorated function stays usable."""
        return self.fn(*args, **kwargs)

    def args_schema(self) -> dict[str, Any]:
        """The arguments' JSON schema for structured output: no extra properties; those with a default optional."""
        schema = self.args_model.model_json_schema()
        return _clean_schema(schema, schema.get("$defs", {}), ())

    def run(self, args: dict[str, Any]) -> str:
        """Validate ``args``, call the function and return its result as a string of bounded length.

        Raises:
            ToolError: for invalid arguments, or wrapping any exception the function raised.
        """
        if not isinstance(args, dict):
            raise ToolError(f"the arguments of {self.name} must be a JSON object, not {_json_type(args)}")
        try:
            parsed = self.args_model.model_validate(args)
        except ValidationError as exc:
            raise ToolError(_describe_errors(self, exc)) from None
        kwargs = {field: getattr(parsed, field) for field in type(parsed).model_fields}
        try:
            result = self.fn(**kwargs)
        except ToolError:
            raise
        except Exception as exc:  # any bug or failure inside a tool is a result the model can read
            raise ToolError(f"{self.name} failed: {type(exc).__name__}: {exc}") from exc
        return _truncate(result if isinstance(result, str) else str(result), self.max_result_chars)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI function-tool definition, for endpoints with native tool calls."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.args_schema()}}


@overload
def tool(fn: Callable[..., Any], *, name: str | None = None, max_result_chars: int = ...) -> Tool: ...


@overload
def tool(fn: None = None, *, name: str | None = None,
         max_result_chars: int = ...) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         max_result_chars: int = DEFAULT_MAX_RESULT_CHARS) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a :class:`Tool` from a typed function: ``@tool`` or ``@tool(name="...")``.

    Every parameter needs a type hint (``Annotated[str, Field(pattern=..., max_length=...)]`` adds
    constraints); defaults are honoured. The docstring's first paragraph is the description, and a
    Google-style ``Args:`` section describes the parameters.
    """

    def build(f: Callable[..., Any]) -> Tool:
        tool_name = name or f.__name__
        doc = inspect.getdoc(f)
        if not doc:
            raise TypeError(f"tool {tool_name!r} needs a docstring: its first paragraph tells the model what it does")
        fields = _fields(f, tool_name, _arg_docs(doc))
        model = create_model(f"{_camel(tool_name)}Args", __config__=ConfigDict(extra="forbid"), **fields)
        description = " ".join(doc.split("\n\n", 1)[0].split())
        return Tool(tool_name, description, model, f, max_result_chars)

    return build if fn is None else build(fn)


def action_schema(tools: Sequence[Tool]) -> dict[str, Any]:
    """ONE JSON schema for the next action ``{"tool": name, "args": {...}}``, args depending on the tool."""
    names = [t.name for t in tools]
    if not names:
        raise ValueError("action_schema needs at least one tool")
    if len(set(names)) != len(names):
        raise ValueError(f"tool names must be unique, got {names}")
    return {"anyOf": [
        {"type": "object",
         "properties": {"tool": {"const": t.name}, "args": t.args_schema()},
         "required": ["tool", "args"],
         "additionalProperties": False}
        for t in tools
    ]}


def parse_action(text: str, tools: Sequence[Tool]) -> tuple[Tool, dict[str, Any]]:
    """Parse an action ``{"tool": name, "args": {...}}`` into the tool and its (not yet validated) arguments.

    A surrounding Markdown code fence is tolerated, and a missing ``args`` means no arguments.

    Raises:
        ToolError: for invalid JSON, an unknown tool (the known ones are listed) or args that are not an object.
    """
    known = {t.name: t for t in tools}
    example = 'write one JSON object like {"tool": "<name>", "args": {...}}'
    try:
        action = json.loads(_strip_fence(text))
    except json.JSONDecodeError as exc:
        raise ToolError(f"the action is not valid JSON ({exc.msg} at column {exc.colno}); {example}") from None
    if not isinstance(action, dict):
        raise ToolError(f"the action must be a JSON object, not {_json_type(action)}; {example}")
    name = action.get("tool")
    if not isinstance(name, str) or name not in known:
        shown = "no tool name" if name is None else f"unknown tool {json.dumps(name)[:60]}"
        raise ToolError(f"{shown}; known tools: {', '.join(known)}")
    args = action.get("args", {})
    if not isinstance(args, dict):
        raise ToolError(f'"args" of {name} must be a JSON object, not {_json_type(args)}')
    return known[name], args


def _fields(fn: Callable[..., Any], tool_name: str, arg_docs: dict[str, str]) -> dict[str, Any]:
    """pydantic field definitions ``name -> (annotation, default)`` from the function's signature."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except NameError as exc:  # a string annotation naming a local type
        raise TypeError(f"tool {tool_name!r}: cannot resolve a type hint ({exc}); use module-level types") from exc
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise TypeError(f"tool {tool_name!r}: parameter {param.name!r} must be a named parameter")
        if param.name not in hints:
            raise TypeError(f"tool {tool_name!r}: parameter {param.name!r} needs a type hint")
        annotation = hints[param.name]
        if param.name in arg_docs and not _has_description(annotation):
            annotation = Annotated[annotation, Field(description=arg_docs[param.name])]
        fields[param.name] = (annotation, ... if param.default is param.empty else param.default)
    return fields


def _arg_docs(doc: str) -> dict[str, str]:
    """Parameter descriptions from a Google-style ``Args:`` section."""
    docs: dict[str, str] = {}
    current, indent, inside = None, None, False
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:", "Parameters:"):
            inside = True
        elif inside and line and not line[0].isspace():
            break  # the next section
        elif inside and line.strip():
            depth = len(line) - len(line.lstrip())
            entry = re.match(r"\s*(\w+)\s*(?:\(.*?\))?\s*:\s*(.*)", line)
            if entry and indent in (None, depth):
                indent, current = depth, entry[1]
                docs[current] = entry[2].strip()
            elif current:
                docs[current] = f"{docs[current]} {line.strip()}".strip()
    return docs


def _has_description(annotation: Any) -> bool:
    metadata = getattr(annotation, "__metadata__", ())
    return any(isinstance(m, FieldInfo) and m.description for m in metadata)


def _clean_schema(node: dict[str, Any], defs: dict[str, Any], seen: tuple[str, ...]) -> dict[str, Any]:
    """Inline ``$ref``s, keep only supported keywords, close every object (nothing extra; no default: required)."""
    if "$ref" in node or len(node.get("allOf", ())) == 1:
        ref = node["$ref"] if "$ref" in node else node["allOf"][0]["$ref"]
        ref_name = ref.rsplit("/", 1)[-1]
        if ref_name in seen:
            raise TypeError(f"recursive argument type {ref_name!r} cannot be a structured-output schema")
        siblings = {k: v for k, v in node.items() if k not in ("$ref", "allOf")}
        return _clean_schema({**defs[ref_name], **siblings}, defs, (*seen, ref_name))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in SCHEMA_KEYWORDS:
            continue
        if key == "properties":  # a mapping of names: property names are never keywords to drop
            value = {prop: _clean_schema(sub, defs, seen) for prop, sub in value.items()}
        elif key == "anyOf":
            value = [_clean_schema(sub, defs, seen) for sub in value]
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            value = _clean_schema(value, defs, seen)
        out[key] = value
    if "properties" in out:
        # Only what has no default is required: a small model writes every property the grammar asks for, and
        # fills an optional one with a value the request never gave (measured: README, Suite format).
        out["required"] = [p for p in out["properties"] if p in node.get("required", ())]
        out["additionalProperties"] = False
    return out


def _describe_errors(t: Tool, exc: ValidationError) -> str:
    allowed = ", ".join(f.alias or name for name, f in t.args_model.model_fields.items()) or "none"
    problems = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "arguments"
        if error["type"] == "extra_forbidden":  # the allowed names listed for the arguments themselves
            listed = f" (allowed: {allowed})" if len(error["loc"]) == 1 else ""
            problems.append(f"unexpected argument '{field}'{listed}")
        elif error["type"] == "missing":
            problems.append(f"missing argument '{field}'")
        else:
            shown = _truncate(repr(error["input"]), 60)
            problems.append(f"argument '{field}' = {shown}: {error['msg']}")
    return f"invalid arguments for {t.name}: " + "; ".join(problems)


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [truncated {len(text) - limit} characters]"


def _strip_fence(text: str) -> str:
    fenced = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, re.DOTALL)
    return fenced[1] if fenced else text


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[_-]", name))
