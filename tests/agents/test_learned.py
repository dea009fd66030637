"""Learned exemplars: which runs become exemplars, that each is stored once, and what an agent is shown.

The runs come from the real graph with a scripted model (tests/agents/conftest.py) and go into the real
memory (embedded Qdrant and the all-MiniLM embedder) in a temporary state folder."""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import uuid

import pytest
from langchain_core.messages import HumanMessage, convert_to_openai_messages
from langgraph.checkpoint.sqlite import SqliteSaver

from strop.agents.agent import Agent
from strop.agents.graph import load_exemplars
from strop.agents.learned import LearnedExemplars
from strop.config import AgentSettings, load_settings
from strop.tools.toolkit import LazyMemory
from strop.training.exemplars import exemplar_of, learn
from strop.trajectories import TrajectoryStore
from strop.tui.feedback import ChatFeedback
from tests.agents.conftest import ScriptedModel


def calc(expression: str) -> str:
    return json.dumps({"tool": "calculator", "args": {"expression": expression}}, separators=(",", ":"))


def answer(text: str) -> str:
    return json.dumps({"tool": "final_answer", "args": {"answer": text, "sources": []}}, separators=(",", ":"))


def think(thought: str) -> str:
    return json.dumps({"tool": "think", "args": {"thought": thought}}, separators=(",", ":"))


RUNS = {
    "What is 17 times 23?": [calc("17 * 23"), answer("391")],
    "What is 640 minus 95?": [calc("640 - 95"), answer("545")],
    "Who painted the Mona Lisa?": [think("A famous painting by Leonardo."), answer("Leonardo da Vinci")],
}


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    yield state
    LazyMemory(load_settings(state_dir=state)).close()


@pytest.fixture
def settings(state):
    """Each test in its own exemplar namespace of one memory (the embedder loads once)."""
    agent = AgentSettings(max_steps=4, learned_exemplars=2, exemplar_namespace=f"ex-{uuid.uuid4().hex[:8]}")
    return load_settings(state_dir=state, agent=agent)


def quiet(settings):
    """``settings`` with learned exemplars off: the runs that make exemplars need none."""
    return settings.model_copy(update={"agent": settings.agent.model_copy(update={"learned_exemplars": 0})})


def runs(settings, tools, replies: dict[str, list[str]], store: TrajectoryStore):
    """One real episode per question, scripted, each logged to ``store``."""
    trajectories = {}
    for question, actions in replies.items():
        agent = Agent(quiet(settings), ScriptedModel(replies=list(actions)), tools, model_name="m", store=store)
        trajectories[question] = agent.run(question)
    return trajectories


def test_off_by_default_and_nothing_opened(tmp_path, tools, monkeypatch):
    monkeypatch.setenv("STROP_STATE_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.agent.learned_exemplars == 0
    model = ScriptedModel(replies=RUNS["What is 17 times 23?"])
    Agent(settings, model, tools, model_name="m").run("What is 17 times 23?")
    questions = [m.content for m in model.calls[0]["messages"] if isinstance(m, HumanMessage)]
    assert len(questions) == len(load_exemplars(tools)) + 1  # the file exemplars and the question
    assert not settings.memory_dir.exists()


def test_only_verified_runs_are_learned_and_each_once(settings, tools, tmp_path):
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    done = runs(settings, tools, RUNS | {"What is 1 / 0?": [calc("1 / 0"), answer("none")]}, store)
    feedback = ChatFeedback(settings.feedback_dir)
    feedback.rate(done["What is 17 times 23?"], +1)
    feedback.rate(done["What is 640 minus 95?"], -1)
    feedback.rate(done["What is 1 / 0?"], +1)  # a tool error keeps it out all the same
    memory = LazyMemory(settings)

    first = learn(settings, store, memory)
    assert (first.scanned, first.qualified, first.added) == (4, 1, 1)
    assert first.reasons == {"failed its graders or rated -1": 1, "tool error or invalid action": 1,
                             "not verified (no passed grade or +1 rating)": 1}
    again = learn(settings, store, memory)
    assert (again.added, again.already_stored) == (0, 1)

    clean = learn(settings, store, memory, require="clean")  # adds the unrated Mona Lisa run, not the -1 one
    assert (clean.qualified, clean.added, clean.already_stored) == (2, 1, 1)
    with memory as mem:
        assert mem.backend.count(_namespace(settings)) == 2


def test_retrieval_puts_the_nearest_last_and_never_the_same_question(settings, tools, tmp_path):
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    runs(settings, tools, RUNS, store)
    memory = LazyMemory(settings)
    learn(settings, store, memory, require="clean")
    learned = LearnedExemplars(memory, settings.agent.exemplar_namespace, 2, tools)

    shown = [e["question"] for e in learned.episodes("What is 18 times 24?")]
    assert shown == ["What is 640 minus 95?", "What is 17 times 23?"]
    assert learned.episodes("Who painted the Mona Lisa?")[-1]["question"] != "Who painted the Mona Lisa?"
    for same in ("What is 17 times 23?", "what is 17 times  23"):  # an evaluation case never sees its own run
        assert "What is 17 times 23?" not in [e["question"] for e in learned.episodes(same)]
    without_calculator = LearnedExemplars(memory, settings.agent.exemplar_namespace, 2,
                                          [t for t in tools if t.name != "calculator"])
    assert [e["question"] for e in without_calculator.episodes("What is 18 times 24?")] == [
        "Who painted the Mona Lisa?"]


def test_agent_shows_learned_exemplars_between_the_file_ones_and_the_question(settings, tools, tmp_path):
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    runs(settings, tools, RUNS, store)
    learn(settings, store, LazyMemory(settings), require="clean")
    model = ScriptedModel(replies=[calc("19 * 25"), answer("475")])
    agent = Agent(settings, model, tools, model_name="m", store=store)
    trajectory = agent.run("What is 19 times 25?")

    read = model.calls[0]["messages"]
    questions = [m.content for m in read if isinstance(m, HumanMessage)]
    assert questions[-3:] == ["What is 640 minus 95?", "What is 17 times 23?", "What is 19 times 25?"]
    assert len(questions) == len(load_exemplars(tools)) + 2 + 1
    assert [m.content for m in read[-3:-1]] == ["391", answer("391")]  # the learned run, as the model wrote it
    assert model.calls[1]["messages"][:len(read)] == read  # retrieved once, the same on every step
    in_a_batch = ScriptedModel(replies=[calc("19 * 25"), answer("475")])
    asyncio.run(Agent(settings, in_a_batch, tools, model_name="m").run_many(["What is 19 times 25?"]))
    assert in_a_batch.calls[0]["messages"][:-1] == read[:-1]  # the async path retrieves them too (in a thread)
    history = trajectory.messages[:1]
    assert agent.context(history) == [{"role": m["role"], "content": m["content"]}
                                      for m in convert_to_openai_messages(read)]


def test_a_later_turn_of_a_conversation_is_no_exemplar(settings, tools, tmp_path):
    saver = SqliteSaver(sqlite3.connect(tmp_path / "threads.sqlite", check_same_thread=False))
    replies = [calc("17 * 23"), answer("391"), calc("391 + 1"), answer("392")]
    agent = Agent(quiet(settings), ScriptedModel(replies=replies), tools, model_name="m", checkpointer=saver)
    first = agent.run("What is 17 times 23?", thread_id="t")
    later = agent.run("And plus one?", thread_id="t")  # means nothing without the turn before
    assert exemplar_of(first) == {"question": "What is 17 times 23?", "steps": [
        {"action": {"tool": "calculator", "args": {"expression": "17 * 23"}}, "result": "391"},
        {"action": {"tool": "final_answer", "args": {"answer": "391", "sources": []}}}]}
    assert exemplar_of(later) is None


def _namespace(settings):
    from strop.memory.schema import SearchFilter

    return SearchFilter(namespace=settings.agent.exemplar_namespace).where()


def test_one_open_memory_is_shared_in_a_process_and_let_go_of_when_unused(settings):
    from strop.memory.core import Memory

    tools_memory, exemplars_memory = LazyMemory(settings), LazyMemory(settings)
    with tools_memory as opened:
        pass
    with exemplars_memory as again:  # the embedded engine would refuse to open its folder a second time
        assert again is opened
    del tools_memory, exemplars_memory, opened, again
    gc.collect()
    with Memory(settings) as direct:  # as a round's self-instruct stage opens it
        assert direct.stats()["collection"] == settings.memory.collection
