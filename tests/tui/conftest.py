"""A stand-in for the model server: the chat app runs a real agent (graph, tools, checkpointer,
trajectory log) on ``ScriptedModel``, which replays JSON actions instead of asking vLLM, and a
stand-in memory that returns fixed passages instead of embedding with Qdrant. The real server and
memory are covered by tests/integration/test_tui.py."""

from __future__ import annotations

import sqlite3
from typing import Annotated

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver
from pydantic import Field

from strop.agents.agent import Agent
from strop.config import load_settings
from strop.memory.core import IngestReport
from strop.memory.schema import Hit
from strop.tools.base import tool
from strop.tools.builtin import BUILTIN_TOOLS
from strop.tools.toolkit import final_answer
from strop.trajectories import TrajectoryStore
from strop.tui.app import ChatApp
from strop.tui.session import Backend
from strop.tui.turns import CancelSwitch
from tests.agents.conftest import ScriptedModel

CALC = '{"tool":"calculator","args":{"expression":"17 * 23"}}'
ANSWER = '{"tool":"final_answer","args":{"answer":"17 × 23 = **391**","sources":[]}}'
THINK = '{"tool":"think","args":{"thought":"Multiply 17 by 23 with the calculator."}}'
SEARCH = '{"tool":"search_memory","args":{"query":"capital of France"}}'
CITED = '{"tool":"final_answer","args":{"answer":"Paris","sources":["abcd1234"]}}'
PASSAGES = [Hit("abcd1234" + "0" * 24, 0.83, {"text": "Paris is the capital of France.", "source": "geo.md"}),
            Hit("ef567890" + "0" * 24, 0.41, {"text": "France is in Europe.", "source": "geo.md"})]


class StandInMemory:
    """What the session needs of ``LazyMemory``: a context manager yielding a memory, and close()."""

    def __init__(self):
        self.facts: list[str] = []
        self.ingested: list[str] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def search(self, query, k=5, where=None):
        return PASSAGES[:k]

    def ingest(self, paths, namespace="default", **kwargs):
        self.ingested += [str(p) for p in paths]
        return IngestReport(files=set(self.ingested), documents=1, chunks=3, added=3)

    def close(self):
        pass


def stand_in_tools(memory: StandInMemory):
    @tool
    def search_memory(query: Annotated[str, Field(min_length=2, max_length=300)]) -> str:
        """Search the memory for passages about a topic; returns passage ids, scores and text.

        Args:
            query: a few words describing what to look for.
        """
        return "\n".join(f"[{h.id[:8]}] ({h.score:.2f}) {h.payload['text']}" for h in PASSAGES)

    @tool
    def remember(fact: Annotated[str, Field(min_length=3, max_length=1000)]) -> str:
        """Store a fact in memory so that later searches find it.

        Args:
            fact: one self-contained sentence.
        """
        memory.facts.append(fact)
        return "Remembered."

    return [*BUILTIN_TOOLS, search_memory, remember, final_answer]


class StandIn:
    """Builds the app's backend on scripted replies; ``model_factory`` can swap in a slower model."""

    def __init__(self, replies: list, model_class=ScriptedModel):
        self.replies, self.model_class = replies, model_class
        self.memory, self.switch = StandInMemory(), CancelSwitch()
        self.models: list[ScriptedModel] = []

    def __call__(self, settings, progress) -> Backend:
        progress("stand-in model, no server")
        store = TrajectoryStore(settings.trajectories_path)
        threads = SqliteSaver(sqlite3.connect(settings.threads_path, check_same_thread=False))
        tools = stand_in_tools(self.memory)

        def make_agent(requested):
            model = self.model_class(replies=self.replies, callbacks=[self.switch])
            self.models.append(model)
            adapter = None if requested in (None, "base") else requested
            return Agent(settings, model, tools, model_name="scripted", adapter=adapter, store=store,
                         checkpointer=threads)

        return Backend("stand-in (no server)", make_agent, self.memory, self.switch)


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("STROP_AGENT__MAX_STEPS", "4")
    return load_settings()


def chat_app(settings, replies, thread=None, **kwargs) -> ChatApp:
    """The app on a stand-in backend; ``app.stand_in`` gives the tests its memory and models."""
    stand_in = StandIn(replies, **kwargs)
    app = ChatApp(settings, thread=thread, backend=stand_in, server_up=lambda _settings: True)
    app.stand_in = stand_in
    return app


@pytest.fixture
def anyio_backend():
    return "asyncio"  # Textual runs on asyncio
