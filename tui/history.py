"""A thread's conversation as turns (question, tool steps, answer), read back from the checkpointer's
messages: for showing a resumed thread and for exporting it as Markdown."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

FINAL_ANSWER = "final_answer"


@dataclass
class Step:
    tool: str
    args: str  # as shown: the argument values
    result: str | None = None
    ok: bool = True


@dataclass
class PastTurn:
    question: str
    steps: list[Step] = field(default_factory=list)
    answer: str | None = None
    note: str | None = None  # how a turn without an answer ended


def brief(args: dict[str, Any] | str) -> str:
    """Arguments as a short line (the same shape the agent's events use)."""
    if isinstance(args, str):
        return args
    return ", ".join(f"{v}" if len(args) == 1 else f"{k}={v}" for k, v in args.items())


def cited(args: dict[str, Any]) -> str:
    """A final answer with its sources, as ``final_answer`` returns it."""
    sources = args.get("sources") or []
    return str(args.get("answer", "")).strip() + (f" [{', '.join(sources)}]" if sources else "")


def past_turns(messages: list[BaseMessage]) -> list[PastTurn]:
    turns: list[PastTurn] = []
    for message in messages:
        if isinstance(message, HumanMessage):
            turns.append(PastTurn(str(message.content)))
        elif turns:
            _add(turns[-1], message)
    return turns


def _add(turn: PastTurn, message: BaseMessage) -> None:
    if isinstance(message, ToolMessage) and turn.steps:
        turn.steps[-1].result, turn.steps[-1].ok = str(message.content), message.status != "error"
    elif isinstance(message, AIMessage) and message.tool_calls:
        call = message.tool_calls[0]
        if call["name"] == FINAL_ANSWER:
            turn.answer = cited(call["args"])
        else:
            turn.steps.append(Step(call["name"], brief(call["args"])))
    elif isinstance(message, AIMessage) and message.invalid_tool_calls:
        turn.steps.append(Step("invalid action", str(message.content), ok=False))
    elif isinstance(message, AIMessage):
        turn.note = str(message.content)


def thread_markdown(name: str, thread_id: str, turns: list[PastTurn]) -> str:
    """The conversation as a Markdown document."""
    when = time.strftime("%Y-%m-%d %H:%M")
    lines = [f"# {name}", "", f"_strop chat thread `{thread_id}`, exported {when}_", ""]
    for turn in turns:
        lines += ["## You", "", turn.question, ""]
        for step in turn.steps:
            result = "" if step.result is None else f" → {_inline(step.result)}"
            lines.append(f"- **{step.tool}** `{_inline(step.args)}`{result}")
        if turn.steps:
            lines.append("")
        lines += ["## strop", "", turn.answer or f"_{turn.note or 'no answer'}_", ""]
    return "\n".join(lines)


def _inline(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    flat = flat if len(flat) <= limit else flat[:limit] + "…"
    return flat.replace("`", "'")
