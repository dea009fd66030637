"""The built-in tools that need nothing but their arguments: ``think`` and ``calculator``.

``search_memory``, ``remember`` and ``final_answer`` need the memory or the graph state, so the agent graph
builds them as closures with :func:`strop.tools.base.tool`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from strop.tools.base import Tool, tool
from strop.tools.calculator import calculator

MAX_THOUGHT = 240  # characters: a thought must fit in one action's token budget


@tool
def think(thought: Annotated[str, Field(min_length=1, max_length=MAX_THOUGHT)]) -> str:
    """Think step by step before acting: write down reasoning or a plan. It changes nothing.

    Args:
        thought: your reasoning, in a few sentences.
    """
    return "Noted. Now act on it."


BUILTIN_TOOLS: tuple[Tool, ...] = (think, calculator)
