"""Reading an action while it is still being generated, so the answer streams before the JSON is complete."""

from __future__ import annotations

import json
import re

_TOOL = re.compile(r'^\s*\{\s*"tool"\s*:\s*"([^"\\]*)"')
_ANSWER_START = re.compile(r'"answer"\s*:\s*"')


def partial_tool(action: str) -> str | None:
    """The tool named by a partial action, once its name is complete."""
    found = _TOOL.match(action)
    return found.group(1) if found else None


def partial_answer(action: str) -> str | None:
    """The text of ``args.answer`` generated so far when the action is a ``final_answer``, else None."""
    if partial_tool(action) != "final_answer":
        return None
    start = _ANSWER_START.search(action)
    if start is None:
        return ""
    return _string_prefix(action[start.end():])


def _string_prefix(rest: str) -> str:
    """Decode a JSON string body up to its closing quote or up to the last complete character."""
    out, i = [], 0
    while i < len(rest):
        char = rest[i]
        if char == '"':
            break
        if char != "\\":
            out.append(char)
            i += 1
            continue
        escape = rest[i:i + 6] if rest[i + 1:i + 2] == "u" else rest[i:i + 2]
        if len(escape) < 2 or (escape[1] == "u" and len(escape) < 6):
            break  # the escape is not complete yet
        try:
            out.append(json.loads(f'"{escape}"'))
        except json.JSONDecodeError:
            out.append(escape)
        i += len(escape)
    return "".join(out)
