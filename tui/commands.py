"""Slash commands: what they are, how a line splits into one, and completion while typing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textual.suggester import Suggester


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    help: str


COMMANDS = {c.name: c for c in [
    Command("help", "/help", "list the commands and keys"),
    Command("new", "/new", "start a new thread"),
    Command("threads", "/threads", "show the thread list (Enter opens, r renames, d deletes)"),
    Command("rename", "/rename NAME", "rename this thread"),
    Command("delete", "/delete", "delete this thread and its checkpoints"),
    Command("ingest", "/ingest PATH", "add files or folders to the agent's memory"),
    Command("remember", "/remember TEXT", "store one fact in memory"),
    Command("search", "/search QUERY", "search the memory the agent searches"),
    Command("adapter", "/adapter [NAME]", "list adapters, or answer with NAME ('base': none)"),
    Command("feedback", "/feedback +1|-1 [better answer]", "rate the last answer; -1 with text trains on it"),
    Command("export", "/export", "write this thread as Markdown"),
    Command("quit", "/quit", "leave (Ctrl-Q)"),
]}

KEYS = [("Enter", "send"), ("Ctrl-C", "cancel the running answer"), ("Ctrl-N", "new thread"),
        ("Ctrl-T", "thread list"), ("Ctrl-L", "back to the prompt"), ("Ctrl-Q", "quit")]


def parse(line: str) -> tuple[str, str] | None:
    """``("search", "cats")`` for ``/search cats``; None for a plain question."""
    if not line.startswith("/"):
        return None
    name, _, rest = line[1:].partition(" ")
    return name.lower(), rest.strip()


def help_markdown() -> str:
    rows = [f"| `{c.usage}` | {c.help} |" for c in COMMANDS.values()]
    keys = [f"| {key} | {what} |" for key, what in KEYS]
    return "\n".join(["| command | what it does |", "|---|---|", *rows, "", "| key | |", "|---|---|", *keys])


class SlashSuggester(Suggester):
    """Completes command names, adapter names after ``/adapter `` and paths after ``/ingest ``."""

    def __init__(self, adapters: Callable[[], list[str]]):
        super().__init__(use_cache=False, case_sensitive=True)
        self.adapters = adapters

    async def get_suggestion(self, value: str) -> str | None:
        if not value.startswith("/"):
            return None
        name, space, rest = value[1:].partition(" ")
        if not space:
            found = next((c for c in COMMANDS if c.startswith(name.lower())), None)
            return f"/{found}" if found and name else None
        if name == "adapter":
            found = next((a for a in self.adapters() if a.startswith(rest)), None)
            return f"/adapter {found}" if found else None
        if name == "ingest" and rest:
            found = complete_path(rest)
            return f"/ingest {found}" if found else None
        return None


def complete_path(prefix: str) -> str | None:
    """The first file or folder whose path starts with ``prefix`` (folders end in /)."""
    path = Path(prefix).expanduser()
    folder, stem = (path, "") if prefix.endswith("/") else (path.parent, path.name)
    try:
        names = sorted(p for p in folder.iterdir() if p.name.startswith(stem) and not p.name.startswith("."))
    except OSError:
        return None
    if not names:
        return None
    found = names[0]
    head = prefix[: len(prefix) - len(stem)]
    return head + found.name + ("/" if found.is_dir() else "")
