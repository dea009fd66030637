"""Memory passages as ``search_memory`` reports them (``[id8] (score) text`` per line)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r"^\[([0-9a-f]{8})\] \((-?[\d.]+)\) (.*)$")


@dataclass(frozen=True)
class Passage:
    id: str  # the first 8 hex digits of the chunk id, as the model sees it
    score: float
    text: str
    source: str = ""  # the document it came from, when known


def parse_passages(result: str) -> list[Passage]:
    """The passages in a ``search_memory`` result; an empty list for "No passages found." or an error."""
    found = (_LINE.match(line) for line in result.splitlines())
    return [Passage(m.group(1), float(m.group(2)), m.group(3)) for m in found if m]


def with_sources(passages: list[Passage], sources: dict[str, str]) -> list[Passage]:
    """The passages with their document source filled in from ``sources`` (id8 -> source)."""
    return [Passage(p.id, p.score, p.text, sources.get(p.id, p.source)) for p in passages]
