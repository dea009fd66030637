"""The chat's widgets: a turn (question, tool panels, streamed answer), passages, threads, status bar."""

from __future__ import annotations

import re

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Collapsible, DataTable, Label, ListItem, ListView, Markdown, Static

from strop.agents.agent import Event
from strop.tui.history import PastTurn, Step
from strop.tui.partial import partial_answer, partial_tool
from strop.tui.passages import Passage, parse_passages
from strop.tui.threads import ChatThread

ICONS = {"think": "💭", "calculator": "🧮", "search_memory": "🔎", "remember": "📌"}


def _short(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class PassageTable(DataTable):
    """Memory passages: id, score, source and the start of the text."""

    def __init__(self, passages: list[Passage], **kwargs):
        super().__init__(show_cursor=False, zebra_stripes=True, **kwargs)
        self.passages = passages

    def on_mount(self) -> None:
        self.add_columns("id", "score", "source", "text")
        for p in self.passages:
            self.add_row(p.id, f"{p.score:.2f}", _short(p.source or "?", 30), _short(p.text, 70))


class ToolPanel(Collapsible):
    """One action and, once it ran, its result. Memory searches open by default to show the passages."""

    def __init__(self, step: Step, passages: list[Passage] | None = None):
        self.step = step
        super().__init__(Static(Content(step.args), classes="args"), title=self._heading(),
                         collapsed=step.tool not in ("search_memory",), classes="tool")
        if step.result is not None:
            self._initial = (step.result, step.ok, passages)

    def on_mount(self) -> None:
        if hasattr(self, "_initial"):
            self.show_result(*self._initial)

    def _heading(self) -> Content:
        step, icon = self.step, ICONS.get(self.step.tool, "🔧")
        if step.tool == "think":
            return Content(f"{icon} {_short(step.args, 90)}")
        outcome = "" if step.result is None else (" → " if step.ok else " ✗ ") + _short(step.result, 40)
        return Content(f"{icon} {step.tool}: {_short(step.args, 50)}{outcome}")

    def show_result(self, result: str, ok: bool, passages: list[Passage] | None = None) -> None:
        self.step.result, self.step.ok = result, ok
        self.title = self._heading()
        self.set_class(not ok, "failed")
        contents = self.query_one(Collapsible.Contents)
        if self.step.tool == "search_memory" and (passages or parse_passages(result)):
            contents.mount(PassageTable(passages or parse_passages(result)))
        elif self.step.tool != "think":
            contents.mount(Static(Content(result), classes="result"))


_CITED = re.compile(r"^(.*?)\s*\[((?:[0-9a-f]{8}(?:, )?)+)\]$", re.DOTALL)  # final_answer's "answer [id, id]"


def split_citation(text: str) -> tuple[str, list[str]]:
    """An answer and the passage ids cited at its end."""
    cited = _CITED.match(text.strip())
    return (cited[1], cited[2].split(", ")) if cited else (text, [])


class TurnView(Vertical):
    """A question and everything the agent did for it; live turns are fed the agent's events.

    An answer that cites memory passages shows them under it: id, document and the start of the text."""

    DEFAULT_CSS = """
    TurnView > .sources { color: $text-muted; margin: 0 0 0 2; height: auto; display: none; }
    """

    def __init__(self, question: str, **kwargs):
        super().__init__(classes="turn", **kwargs)
        self.question = question
        self.action = ""  # the action being generated
        self.passages: dict[str, Passage] = {}  # what this turn's memory searches found, by id

    def compose(self) -> ComposeResult:
        yield Static(Content(self.question), classes="question")
        yield Vertical(classes="steps")
        yield Static("", classes="pending")
        yield Markdown("", classes="answer")
        yield Static("", classes="sources")

    @property
    def steps(self) -> Vertical:
        return self.query_one(".steps", Vertical)

    @property
    def answer(self) -> Markdown:
        return self.query_one(".answer", Markdown)

    def show_past(self, turn: PastTurn) -> None:
        for step in turn.steps:
            self.steps.mount(ToolPanel(step))
            if step.tool == "search_memory" and step.result:
                self._found(parse_passages(step.result))
        self.show_answer(turn.answer or f"*{turn.note or 'no answer'}*")

    def show_token(self, text: str) -> None:
        self.action += text
        answer = partial_answer(self.action)
        if answer is not None:
            self.answer.update(answer + "▍")
            self._pending("")
        else:
            tool = partial_tool(self.action) or "…"
            self._pending(f"{ICONS.get(tool, '🔧')} {tool} {_short(self.action, 70)}")

    def show_action(self, event: Event) -> None:
        self.action = ""
        self._pending("")
        self.steps.mount(ToolPanel(Step(event.tool or "invalid action", event.text, ok=event.ok)))

    def show_result(self, event: Event, passages: list[Passage] | None = None) -> None:
        self.action = ""
        panels = self.steps.query(ToolPanel)
        if panels:
            panels.last().show_result(event.text, event.ok, passages)
        if event.tool == "search_memory" and event.ok:
            self._found(passages or parse_passages(event.text))

    def show_answer(self, text: str) -> None:
        self._pending("")
        answer, cited = split_citation(text)
        self.answer.update(answer)
        self.show_sources(cited)

    def show_sources(self, cited: list[str]) -> None:
        """Under the answer: the passages it cites (those this turn's searches found, or just their ids)."""
        lines = []
        for passage_id in cited:
            found = self.passages.get(passage_id)
            origin = f" {_short(found.source, 30)}" if found and found.source else ""
            text = f" — {_short(found.text, 80)}" if found else ""
            lines.append(f"📎 [{passage_id}]{origin}{text}")
        sources = self.query_one(".sources", Static)
        sources.update(Content("\n".join(lines)))
        sources.display = bool(lines)

    def _found(self, passages: list[Passage]) -> None:
        self.passages.update({p.id: p for p in passages})

    def show_note(self, text: str, kind: str = "warning") -> None:
        self._pending("")
        self.answer.update(f"*{text}*")
        self.add_class(kind)

    def _pending(self, text: str) -> None:
        pending = self.query_one(".pending", Static)
        pending.update(Content(text))
        pending.display = bool(text)


class ThreadItem(ListItem):
    def __init__(self, thread: ChatThread):
        super().__init__(Label(Content(_short(thread.name, 28))))
        self.thread = thread


class ThreadList(ListView):
    """Threads, most recently used first."""

    BINDINGS = [("r", "rename", "Rename"), ("d", "delete", "Delete"), ("n", "new", "New")]

    async def show(self, threads: list[ChatThread], current: str | None) -> None:
        await self.clear()
        await self.extend(ThreadItem(t) for t in threads)
        ids = [t.id for t in threads]
        if current in ids:
            self.index = ids.index(current)

    def action_rename(self) -> None:
        self.app.action_rename_thread()

    def action_delete(self) -> None:
        self.app.action_delete_thread()

    def action_new(self) -> None:
        self.app.action_new_thread()


class StatusBar(Static):
    """Endpoint, model, adapter, tokens/s, steps, and what is going on."""

    def show(self, *, endpoint: str = "", model: str = "", adapter: str = "", rate: float = 0.0, steps: int = 0,
             state: str = "") -> None:
        parts = [f"⚡ {endpoint}" if endpoint else "", f"model {model}" if model else "",
                 f"adapter {adapter}" if adapter else "", f"{rate:.1f} tok/s", f"step {steps}", state]
        self.update(Content("  │  ".join(p for p in parts if p)))
