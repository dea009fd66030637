"""The ``strop chat`` app: threads on the left, the conversation in the middle, the prompt below.

Model calls, memory and adapter work run in thread workers, so the screen never waits on them; their
results come back through ``call_from_thread``. Errors become notifications (cause, then fix).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Collapsible, Footer, Header, Input, ListView, Markdown, Static

from strop.agents.agent import Event
from strop.config import Settings
from strop.errors import StropError
from strop.tui.commands import COMMANDS, SlashSuggester, help_markdown, parse
from strop.tui.passages import Passage, parse_passages, with_sources
from strop.tui.screens import delete_question, start_server_question
from strop.tui.session import Backend, ChatSession, live_backend
from strop.tui.threads import new_thread_id
from strop.tui.turns import TokenMeter
from strop.tui.widgets import PassageTable, StatusBar, ThreadItem, ThreadList, TurnView

BackendFactory = Callable[[Settings, Callable[[str], None]], Backend]

WELCOME = "Ask anything. `/help` lists the commands; Tab completes them. Ctrl-C cancels an answer."


def server_running(settings: Settings) -> bool:
    """Whether the model is reachable without starting anything (an external URL counts as reachable)."""
    from strop.serving.server import VLLMServer

    return bool(settings.llm_url) or VLLMServer(settings).running() is not None


class ChatApp(App):
    TITLE = "strop chat"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("ctrl+c", "cancel", "Cancel answer", priority=True),
        Binding("ctrl+n", "new_thread", "New thread"),
        Binding("ctrl+t", "focus_threads", "Threads"),
        Binding("ctrl+l", "focus_prompt", "Prompt", show=False),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, settings: Settings, *, thread: str | None = None, backend: BackendFactory = live_backend,
                 server_up: Callable[[Settings], bool] = server_running):
        super().__init__()
        self.settings, self.backend_factory, self.server_up = settings, backend, server_up
        self.session: ChatSession | None = None
        self.thread_id = thread or new_thread_id()
        self.named_thread = thread  # --thread NAME: listed under that name
        self.answering = False
        self.status: dict[str, Any] = {"state": "connecting"}

    # -- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        with Horizontal(id="main"):
            with Vertical(id="sidebar"):
                yield Static("Threads", classes="heading")
                yield ThreadList(id="threads")
            with Vertical():
                yield VerticalScroll(id="log")
                yield Input(placeholder="Ask strop, or / for commands", id="prompt",
                            suggester=SlashSuggester(self._adapter_names))
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self._note(WELCOME)
        self._status()
        self.query_one("#prompt", Input).focus()
        if self.server_up(self.settings):
            self._connect()
        else:
            self.push_screen(start_server_question(str(self.settings.state_dir)), self._start_answered)

    # -- connecting ------------------------------------------------------------------------
    def _start_answered(self, start: bool | None) -> None:
        if start:
            self._connect(starting=True)
        else:
            self.exit()

    def _connect(self, starting: bool = False) -> None:
        began = time.monotonic()
        label = "starting the embedded vLLM server" if starting else "connecting to the model server"
        banner = self._note(f"{label}…")

        def progress(message: str) -> None:
            text = f"{label} ({time.monotonic() - began:.0f} s): {message}"
            self.call_from_thread(self._progress, banner, text)

        def connect() -> None:
            backend = self.backend_factory(self.settings, progress)
            session = ChatSession(self.settings, backend)
            self.call_from_thread(self._connected, session, banner, time.monotonic() - began)

        self._background(connect, name="connect", on_error=lambda: self._status(state="not connected: /quit"))

    def _progress(self, banner: Static, text: str) -> None:
        banner.update(Content(text))
        self._status(state=text)

    def _connected(self, session: ChatSession, banner: Static, seconds: float) -> None:
        self.session = session
        banner.update(Content(f"connected to {session.backend.endpoint} in {seconds:.0f} s"))
        if self.named_thread:
            session.book.ensure(self.named_thread, self.named_thread)
        self._open_thread(self.thread_id, clear=False)

    # -- threads ---------------------------------------------------------------------------
    def _open_thread(self, thread_id: str, clear: bool = True) -> None:
        self.thread_id = thread_id
        log = self.query_one("#log", VerticalScroll)
        if clear:
            log.remove_children()
        for turn in self.session.history(thread_id):
            view = TurnView(turn.question)
            log.mount(view)
            view.call_after_refresh(view.show_past, turn)
        listed = self.session.book.get(thread_id)
        self.sub_title = listed.name if listed else "new thread"
        self._refresh_threads()
        self._status(state="ready")
        log.call_after_refresh(log.scroll_end, animate=False)

    def _refresh_threads(self) -> None:
        threads = self.query_one(ThreadList).show(self.session.book.list(), self.thread_id)
        self.run_worker(threads, name="threads", group="threads", exclusive=True)

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        if isinstance(event.item, ThreadItem) and self._idle():
            self._open_thread(event.item.thread.id)
            self.action_focus_prompt()

    def action_new_thread(self) -> None:
        if self._idle():
            self._open_thread(new_thread_id())
            self.action_focus_prompt()

    def action_focus_threads(self) -> None:
        threads = self.query_one(ThreadList)
        if threads.index is None and threads.children:
            threads.index = 0  # a new thread is not listed yet: start on the most recent one
        threads.focus()

    def action_focus_prompt(self) -> None:
        self.query_one("#prompt", Input).focus()

    def action_rename_thread(self) -> None:
        prompt = self.query_one("#prompt", Input)
        listed = self.session and self.session.book.get(self._highlighted_thread())
        prompt.value = f"/rename {listed.name if listed else ''}"
        prompt.focus()
        prompt.cursor_position = len(prompt.value)

    def action_delete_thread(self) -> None:
        if not self._idle():
            return
        thread_id = self._highlighted_thread()
        listed = self.session.book.get(thread_id)

        def answered(yes: bool | None) -> None:
            if yes:
                self.session.delete_thread(thread_id)
                self.notify(f"Deleted “{listed.name if listed else thread_id}”.")
                self._open_thread(self.thread_id if thread_id != self.thread_id else new_thread_id())

        self.push_screen(delete_question(listed.name if listed else thread_id), answered)

    def _highlighted_thread(self) -> str:
        threads = self.query_one(ThreadList)
        item = threads.highlighted_child
        return item.thread.id if threads.has_focus and isinstance(item, ThreadItem) else self.thread_id

    # -- the prompt ------------------------------------------------------------------------
    def on_input_submitted(self, event: Input.Submitted) -> None:
        line = event.value.strip()
        if not line:
            return
        if self.session is None and parse(line) != ("quit", ""):
            self.notify("Not connected to a model server yet.", severity="warning")
            return
        event.input.value = ""
        command = parse(line)
        if command is None:
            self._ask(line)
        else:
            self._command(*command)

    def _ask(self, question: str) -> None:
        if not self._idle():
            return
        view = TurnView(question)
        log = self.query_one("#log", VerticalScroll)
        log.mount(view)
        log.scroll_end(animate=False)
        self.answering = True
        self._status(state="answering (Ctrl-C cancels)", steps=0, rate=0.0)
        thread_id, session = self.thread_id, self.session
        meter, seen = TokenMeter(), {"steps": 0, "query": ""}

        def emit(event: Event) -> None:
            passages = self._passages(event, seen)
            if event.kind == "token":
                meter.token()
            else:
                meter.pause()
                seen["steps"] += event.kind in ("action", "answer")
            self.call_from_thread(self._show, view, event, passages, meter.rate, seen["steps"])

        def turn() -> None:
            trajectory = session.ask(question, thread_id, emit)
            self.call_from_thread(self._turn_done, view, trajectory, meter.rate)

        self._background(turn, name="turn", on_error=lambda: self._turn_done(view, None, 0.0, failed=True))

    def _passages(self, event: Event, seen: dict) -> list[Passage] | None:
        """For a memory search result, its passages with their sources (runs in the turn's worker)."""
        if event.kind == "action" and event.tool == "search_memory":
            seen["query"] = event.text
        if not (event.kind == "result" and event.tool == "search_memory" and event.ok):
            return None
        passages = parse_passages(event.text)
        try:
            return with_sources(passages, self.session.sources(seen["query"])) if passages else None
        except Exception:  # sources are a nicety: the passages still show without them
            return passages

    def _show(self, view: TurnView, event: Event, passages, rate: float, steps: int) -> None:
        if event.kind == "token":
            view.show_token(event.text)
        elif event.kind == "action":
            view.show_action(event)
        elif event.kind == "result":
            view.show_result(event, passages)
        elif event.kind == "answer":
            view.show_answer(event.text)
        elif event.kind == "budget":
            view.show_note(event.text)
        elif event.kind == "error":
            view.show_note(event.text, "error")
            self.notify(event.text, title="The run failed", severity="error", timeout=10)
        self._status(rate=rate, steps=steps)
        self._follow()

    def _turn_done(self, view: TurnView, trajectory, rate: float, failed: bool = False) -> None:
        self.answering = False
        if trajectory is None and not failed:
            view.show_note("cancelled: the thread is as it was before this question")
        elif failed:
            view.show_note("failed (see the notification)", "error")
        steps = trajectory.model_calls if trajectory is not None else self.status.get("steps", 0)
        self._status(state="ready", rate=rate, steps=steps)
        listed = self.session.book.get(self.thread_id)
        self.sub_title = listed.name if listed else self.sub_title
        self._refresh_threads()
        self._follow()

    def action_cancel(self) -> None:
        if self.answering and self.session is not None:
            self.session.cancel()
            self._status(state="cancelling…")
        elif isinstance(self.focused, Input) and self.focused.value:
            self.focused.value = ""
        else:
            self.notify("Nothing to cancel. Ctrl-Q or /quit leaves.", timeout=3)

    # -- slash commands --------------------------------------------------------------------
    def _command(self, name: str, arg: str) -> None:
        handler = getattr(self, f"_cmd_{name}", None) if name in COMMANDS else None
        if handler is None:
            self.notify(f"Unknown command /{name}. /help lists them.", severity="warning")
            return
        handler(arg)

    def _cmd_help(self, _arg: str) -> None:
        self._note(help_markdown(), markdown=True)

    def _cmd_new(self, _arg: str) -> None:
        self.action_new_thread()

    def _cmd_threads(self, _arg: str) -> None:
        self.action_focus_threads()

    def _cmd_quit(self, _arg: str) -> None:
        self.exit()

    def _cmd_rename(self, arg: str) -> None:
        if not arg:
            self.notify("Usage: /rename NAME", severity="warning")
            return
        self.session.book.ensure(self.thread_id, arg)
        self.session.book.rename(self.thread_id, arg)
        self.sub_title = arg
        self._refresh_threads()

    def _cmd_delete(self, _arg: str) -> None:
        self.action_delete_thread()

    def _cmd_export(self, _arg: str) -> None:
        self._background(lambda: self.session.export(self.thread_id),
                         done=lambda path: self._note(f"Exported this thread to {path}"))

    def _cmd_feedback(self, arg: str) -> None:
        rating, _, better = arg.partition(" ")
        if rating not in ("+1", "-1", "1"):
            self.notify("Usage: /feedback +1 | /feedback -1 [a better answer]", severity="warning")
            return
        thread_id = self.thread_id
        self._background(lambda: self.session.rate(thread_id, -1 if rating == "-1" else 1, better.strip()),
                         done=lambda said: self._done_note(f"📝 {said}"))

    def _cmd_remember(self, arg: str) -> None:
        if not arg:
            self.notify("Usage: /remember TEXT", severity="warning")
            return
        self._status(state="remembering…")
        self._background(lambda: self.session.remember(arg), done=lambda said: self._done_note(f"📌 {said}"))

    def _cmd_search(self, arg: str) -> None:
        if not arg:
            self.notify("Usage: /search QUERY", severity="warning")
            return
        self._status(state="searching memory…")
        self._background(lambda: self.session.search(arg), done=lambda hits: self._show_search(arg, hits))

    def _cmd_ingest(self, arg: str) -> None:
        if not arg:
            self.notify("Usage: /ingest PATH", severity="warning")
            return
        self._status(state=f"ingesting {arg}…")
        note = self._note(f"📥 ingesting {arg}…")  # in place now: the next question comes after it
        self._background(self.session.start_ingest(arg.split(), lambda report: self.call_from_thread(
            self._ingested, report, note)), on_error=lambda: note.update(Content(f"📥 could not ingest {arg}")))

    def _cmd_adapter(self, arg: str) -> None:
        if not arg:
            names = [f"**{n}** (in use)" if n == self.session.adapter else n for n in self.session.adapter_names()]
            self._note("Adapters: " + ", ".join(names) + ".  `/adapter NAME` switches.", markdown=True)
            return
        if not self._idle():
            return
        self._status(state=f"loading adapter {arg}…")
        self._background(lambda: self.session.use_adapter(arg), done=lambda _: self._done_note(
            f"Answering with adapter {self.session.adapter}."))

    # -- results of background work ----------------------------------------------------------
    def _show_search(self, query: str, passages: list[Passage]) -> None:
        self._status(state="ready")
        if not passages:
            self._note(f"🔎 nothing in memory for “{query}”")
            return
        panel = Collapsible(PassageTable(passages), title=Content(f"🔎 memory: {query} ({len(passages)} passages)"),
                            collapsed=False, classes="tool turn-system")
        self.query_one("#log", VerticalScroll).mount(panel)
        self._follow()

    def _ingested(self, report, note: Static) -> None:
        summary = report.summary()
        text = (f"📥 ingested {summary['files']} files: {summary['added']} chunks added, "
                f"{summary['already_stored']} already stored")
        skipped = f"; skipped {summary['problems'][0]}" if summary["problems"] else ""
        note.update(Content(text + skipped))
        self._status(state="ready")
        for problem in summary["problems"][:5]:
            self.notify(problem, title="Skipped", severity="warning", timeout=10)

    def _done_note(self, text: str) -> None:
        self._status(state="ready")
        self._note(text)

    # -- helpers ---------------------------------------------------------------------------
    def _background(self, job: Callable[[], Any], *, name: str = "work", done: Callable[[Any], None] | None = None,
                    on_error: Callable[[], None] | None = None) -> None:
        """Run ``job`` in a thread worker; ``done(result)`` and errors come back to the screen."""

        def work() -> None:
            try:
                result = job()
            except StropError as exc:
                self.call_from_thread(self._failed, exc, on_error)
                return
            except Exception as exc:  # shown, not raised: the chat stays usable
                self.call_from_thread(self._failed, StropError(f"{type(exc).__name__}: {exc}"), on_error)
                return
            if done is not None:
                self.call_from_thread(done, result)

        self.run_worker(work, name=name, thread=True, exit_on_error=False)

    def _failed(self, exc: StropError, on_error: Callable[[], None] | None) -> None:
        message = exc.message + (f"\nFix: {exc.fix}" if exc.fix else "")
        self.notify(message, title="Error", severity="error", timeout=15)
        self._status(state="ready" if self.session else "not connected")
        if on_error is not None:
            on_error()

    def _idle(self) -> bool:
        if self.answering:
            self.notify("Still answering: wait, or press Ctrl-C to cancel.", severity="warning", timeout=3)
        return not self.answering

    def _note(self, text: str, markdown: bool = False) -> Static | Markdown:
        note = Markdown(text, classes="system turn-system") if markdown else Static(
            Content(text), classes="system turn-system")
        self.query_one("#log", VerticalScroll).mount(note)
        self._follow()
        return note

    def _follow(self) -> None:
        self.query_one("#log", VerticalScroll).scroll_end(animate=False)

    def _adapter_names(self) -> list[str]:
        return self.session.adapter_names() if self.session else []

    def _status(self, **changes: Any) -> None:
        self.status.update(changes)
        session = self.session
        if session is not None:
            self.status.update(endpoint=session.backend.endpoint, model=session.agent.model_name,
                               adapter=session.adapter)
        self.query_one(StatusBar).show(**self.status)
