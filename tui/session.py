"""What the chat app talks to: the agent (rebuilt on an adapter switch), its memory, threads and feedback.

Nothing here knows about Textual, so the app's commands are plain method calls that tests can make too.
The memory is the agent's own (one :class:`LazyMemory`), because the embedded Qdrant folder is
locked to one opener at a time.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from strop.agents.agent import Agent, Event
from strop.config import Settings
from strop.errors import StropError
from strop.files import plain_name
from strop.memory.core import IngestReport
from strop.serving.adapters import Registry
from strop.tools.toolkit import LazyMemory
from strop.trajectories import Trajectory
from strop.tui.feedback import ChatFeedback
from strop.tui.history import PastTurn, past_turns, thread_markdown
from strop.tui.passages import Passage
from strop.tui.threads import ThreadBook, thread_name
from strop.tui.turns import CancelSwitch, run_turn, thread_config

AgentMaker = Callable[[str | None], Agent]  # adapter request (None: the active one, "base": none) -> agent


@dataclass
class Backend:
    """How to make agents for one endpoint, and the parts they share."""

    endpoint: str  # shown in the status bar
    make_agent: AgentMaker
    memory: LazyMemory
    switch: CancelSwitch
    moved: Callable[[], bool] = lambda: False  # the server moved (a promotion swapped it): agents need making anew


class ChatSession:
    def __init__(self, settings: Settings, backend: Backend):
        self.settings = settings
        self.backend = backend
        self.requested: str | None = None  # the adapter asked for (None: the active one)
        self.agent = backend.make_agent(None)
        self.book = ThreadBook(settings.threads_path)
        self.feedback = ChatFeedback(settings.feedback_dir)
        self._last: dict[str, Trajectory] = {}  # thread -> its last run in this session
        self._ingests = threading.Condition()  # questions wait for the ingests started before them
        self._pending_ingests = 0

    # -- turns -----------------------------------------------------------------------------
    def ask(self, question: str, thread_id: str, emit: Callable[[Event], None]) -> Trajectory | None:
        """Run one turn (in a worker thread); None when it was cancelled.

        It first waits for the ingests started before it, so the answer can use what they add."""
        with self._ingests:
            self._ingests.wait_for(lambda: self._pending_ingests == 0)
        self.book.ensure(thread_id, thread_name(question))
        if self.backend.moved():
            self.agent = self.backend.make_agent(self.requested)
        trajectory = run_turn(self.agent, question, thread_id, self.backend.switch, emit)
        if trajectory is not None:
            self._last[thread_id] = trajectory
        return trajectory

    def cancel(self) -> None:
        self.backend.switch.pull()

    def history(self, thread_id: str) -> list[PastTurn]:
        state = self.agent.graph.get_state(thread_config(thread_id))
        return past_turns(state.values.get("messages", []))

    # -- threads ---------------------------------------------------------------------------
    def delete_thread(self, thread_id: str) -> None:
        """Forget the thread: its name and its checkpoints (its trajectories stay in the log)."""
        self.agent.graph.checkpointer.delete_thread(thread_id)
        self.book.remove(thread_id)
        self._last.pop(thread_id, None)

    def export(self, thread_id: str) -> Path:
        """Write the thread as Markdown under ``<state>/exports/``; returns the file."""
        turns = self.history(thread_id)
        if not turns:
            raise StropError("This thread has no messages to export yet.", fix="Ask something first.")
        listed = self.book.get(thread_id)
        name = listed.name if listed else thread_id
        path = self.settings.state_dir / "exports" / f"{_slug(name)}-{plain_name(thread_id, 'thread id')}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(thread_markdown(name, thread_id, turns), encoding="utf-8")
        return path.resolve()

    # -- feedback --------------------------------------------------------------------------
    def last_run(self, thread_id: str) -> Trajectory:
        trajectory = self._last.get(thread_id)
        if trajectory is None and self.agent.store is not None:
            trajectory = next(self.agent.store.query(thread_id=thread_id, limit=1), None)
        if trajectory is None:
            raise StropError("There is no answer in this thread to give feedback on.", fix="Ask a question first.")
        return trajectory

    def rate(self, thread_id: str, rating: int, better: str = "") -> str:
        """Store a rating, or with a better answer after -1 a preference pair; says what was stored."""
        trajectory = self.last_run(thread_id)
        answered = f"“{_brief(trajectory.answer or trajectory.prompt)}”"
        if rating < 0 and better:
            self.feedback.prefer(self.agent.context, trajectory, better)
            return (f"Feedback stored: “{_brief(better)}” preferred to {answered}, a training pair for the next "
                    f"improvement round ({self.feedback.log.pairs_path}).")
        self.feedback.rate(trajectory, rating)
        return f"Feedback stored: {rating:+d} for {answered} ({self.feedback.log.ratings_path})."

    # -- memory ----------------------------------------------------------------------------
    def search(self, query: str) -> list[Passage]:
        from strop.memory.schema import SearchFilter

        with self.backend.memory as memory:
            hits = memory.search(query, k=self.settings.agent.memory_k,
                                 where=SearchFilter(namespace=self.settings.agent.namespace))
        return [Passage(h.id[:8], h.score, h.payload.get("text", ""), h.payload.get("source", "")) for h in hits]

    def sources(self, query: str) -> dict[str, str]:
        """id8 -> document source for what ``search_memory`` found for ``query`` (its result text omits them)."""
        return {p.id: p.source for p in self.search(query)}

    def ingest(self, paths: list[str]) -> IngestReport:
        with self.backend.memory as memory:
            return memory.ingest(paths, namespace=self.settings.agent.namespace)

    def start_ingest(self, paths: list[str], reported: Callable[[IngestReport], None]) -> Callable[[], None]:
        """Count an ingest as started now, and return the job that runs it (in a worker thread).

        Questions asked from now on wait until ``reported(report)`` has returned, so what the ingest
        says appears before their answers, and the answers can use what it added."""
        with self._ingests:
            self._pending_ingests += 1

        def job() -> None:
            try:
                reported(self.ingest(paths))
            finally:
                with self._ingests:
                    self._pending_ingests -= 1
                    self._ingests.notify_all()

        return job

    def remember(self, fact: str) -> str:
        remember = next(t for t in self.agent.tools if t.name == "remember")
        return remember.run({"fact": fact})

    # -- adapters --------------------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        """Adapter names, "base" first."""
        return ["base", *(a.name for a in Registry(self.settings.adapters_dir).adapters())]

    @property
    def adapter(self) -> str:
        return self.agent.adapter or "base"

    def use_adapter(self, name: str) -> None:
        """Answer with adapter ``name`` ("base": none) from the next question on."""
        self.agent = self.backend.make_agent(name)
        self.requested = name

    def close(self) -> None:
        self.backend.memory.close()
        self.book.close()


def live_backend(settings: Settings, progress: Callable[[str], None] | None = None) -> Backend:
    """Agents on the configured endpoint (starting the embedded server if needed), as ``open_agent`` builds them,
    plus the cancel switch on the model's token stream."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    from strop.agents.graph import chat_model
    from strop.serving.adapters import resolve_adapter
    from strop.serving.endpoint import connect, refreshed
    from strop.tools.toolkit import standard_tools
    from strop.trajectories import TrajectoryStore

    endpoint = connect(settings, progress)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    memory, switch = LazyMemory(settings), CancelSwitch()
    tools = standard_tools(settings, memory)
    store = TrajectoryStore(settings.trajectories_path)
    threads = SqliteSaver(sqlite3.connect(settings.threads_path, check_same_thread=False))

    def make_agent(requested: str | None) -> Agent:
        nonlocal endpoint
        endpoint = refreshed(settings, endpoint)
        backend.endpoint = endpoint.base_url
        adapter = resolve_adapter(settings, endpoint, requested)
        model = chat_model(endpoint.serving(adapter), settings.sampling, settings.request_timeout_s, callbacks=[switch])
        return Agent(settings, model, tools, model_name=endpoint.model, adapter=adapter, store=store,
                     checkpointer=threads)

    backend = Backend(endpoint.base_url, make_agent, memory, switch,
                      moved=lambda: refreshed(settings, endpoint) != endpoint)
    return backend


def _brief(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "thread"
