import asyncio
import os
import sqlite3
import threading
from typing import Any

import httpx
import openai
from langgraph.checkpoint.sqlite import SqliteSaver

from strop.agents.agent import Agent, Task
from strop.trajectories import TrajectoryStore
from tests.agents.conftest import ScriptedModel
from tests.agents.test_graph import ANSWER, CALC, THINK


def agent_with(settings, tools, replies, **kwargs) -> Agent:
    store = TrajectoryStore(settings.trajectories_path)
    return Agent(settings, ScriptedModel(replies=replies), tools, model_name="m", store=store, **kwargs)


def test_run_logs_one_complete_trajectory(settings, tools):
    agent = agent_with(settings, tools, [CALC, ANSWER], adapter="v3")
    t = agent.run("What is 1234 * 5678?", task=Task("What is 1234 * 5678?", scenario="math", case_id="c1"))
    stored = agent.store.get(t.id)
    assert stored.status == "answered" and stored.answer == "7006652"
    assert (stored.scenario, stored.case_id, stored.adapter, stored.model) == ("math", "c1", "v3", "m")
    roles = [m["role"] for m in stored.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert stored.messages[1]["tool_calls"][0]["function"]["name"] == "calculator"
    assert stored.completion_tokens == 20 and stored.prompt_tokens == 100
    assert stored.sampling["temperature"] == settings.sampling.temperature


def test_stream_yields_tool_events_then_the_answer(settings, tools):
    events = list(agent_with(settings, tools, [CALC, ANSWER]).stream("What is 1234 * 5678?"))
    assert "".join(e.text for e in events if e.kind == "token") == CALC + ANSWER
    events = [e for e in events if e.kind != "token"]
    kinds = [(e.kind, e.tool) for e in events]
    assert kinds == [("action", "calculator"), ("result", "calculator"), ("answer", None), ("end", None)]
    assert events[1].text == "7006652" and events[-1].trajectory.status == "answered"


def test_budget_exhaustion_is_recorded_as_such(settings, tools):
    t = agent_with(settings, tools, [THINK]).run("Think forever")
    assert t.status == "budget_exhausted" and t.answer is None
    assert "could not finish within 4 steps" in t.messages[-1]["content"]


class CutOffModel(ScriptedModel):
    """Reports a reply that is not closed JSON as cut off at the action token budget (vLLM's usage then)."""

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        result = super()._generate(messages, stop, run_manager, **kwargs)
        message = result.generations[0].message
        if not message.content.endswith("}"):
            message.usage_metadata = {"input_tokens": 50, "output_tokens": kwargs["max_tokens"],
                                      "total_tokens": 50 + kwargs["max_tokens"]}
        return result


RUNAWAY = '{"tool":"calculator","args":{"expression":"25 * 1000000000000000000000000'


def test_two_actions_cut_off_in_a_row_end_the_run(settings, tools):
    store = TrajectoryStore(settings.trajectories_path)
    t = Agent(settings, CutOffModel(replies=[RUNAWAY, RUNAWAY, CALC, ANSWER]), tools, model_name="m",
              store=store).run("What is 25 * 10?")
    assert t.status == "budget_exhausted" and t.model_calls == 2
    assert "last two actions ran past 256 tokens" in t.messages[-1]["content"]
    # one cut-off action between whole ones is tried again
    t = Agent(settings, CutOffModel(replies=[RUNAWAY, CALC, RUNAWAY, ANSWER]), tools, model_name="m",
              store=store).run("What is 1234 * 5678?")
    assert t.status == "answered" and t.model_calls == 4


def test_run_many_keeps_order_and_isolates_failures(settings, tools):
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")

    class Flaky(ScriptedModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            if "boom" in messages[-1].content:
                raise openai.APIConnectionError(request=request)
            return super()._generate(messages, stop, run_manager, **kwargs)

    agent = Agent(settings, Flaky(replies=[ANSWER]), tools, model_name="m",
                  store=TrajectoryStore(settings.trajectories_path))
    prompts = [f"question {i}" for i in range(6)] + ["boom"]
    results = asyncio.run(agent.run_many(prompts, concurrency=3))
    assert [t.prompt for t in results] == prompts
    assert [t.status for t in results] == ["answered"] * 6 + ["error"]
    assert "APIConnectionError" in results[-1].errors[0]
    assert agent.store.count() == 7


def test_run_many_has_every_episode_wait_on_the_model_at_once(settings, tools):
    # More episodes than the event loop's default thread pool has threads: none may queue for one.
    episodes = min(32, (os.cpu_count() or 1) + 4) + 2

    class Gathering(ScriptedModel):
        """Each call returns only once every episode's call is in flight (in threads or in the event loop)."""

        threads: Any = None
        tasks: Any = None

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            self.threads.wait()
            return super()._generate(messages, stop, run_manager, **kwargs)

        async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
            await asyncio.wait_for(self.tasks.wait(), 5)
            return super()._generate(messages, stop, run_manager, **kwargs)

    model = Gathering(replies=[CALC] * episodes + [ANSWER])
    model.threads, model.tasks = threading.Barrier(episodes, timeout=5), asyncio.Barrier(episodes)
    agent = Agent(settings, model, tools, model_name="m")
    results = asyncio.run(agent.run_many([f"q{i}" for i in range(episodes)], concurrency=episodes))
    assert [t.status for t in results] == ["answered"] * episodes, results[0].errors


def test_run_does_not_ask_for_tokens_nobody_reads(settings, tools):
    class Unstreamable(ScriptedModel):
        def _stream(self, *args, **kwargs):
            raise AssertionError("run() made the model stream")

    t = Agent(settings, Unstreamable(replies=[CALC, ANSWER]), tools, model_name="m").run("What is 1234 * 5678?")
    assert t.status == "answered", t.errors


def test_threads_resume_from_the_checkpointer(settings, tools):
    saver = SqliteSaver(sqlite3.connect(settings.threads_path, check_same_thread=False))
    agent = agent_with(settings, tools, [CALC, ANSWER], checkpointer=saver)
    first = agent.run("What is 1234 * 5678?", thread_id="t1")
    second = agent.run("And again?", thread_id="t1")
    assert first.thread_id == second.thread_id == "t1"
    assert [m["content"] for m in second.messages if m["role"] == "user"] == ["What is 1234 * 5678?", "And again?"]
    reopened = agent_with(settings, tools, [ANSWER], checkpointer=SqliteSaver(
        sqlite3.connect(settings.threads_path, check_same_thread=False)))
    state = reopened.graph.get_state({"configurable": {"thread_id": "t1"}})
    assert len(state.values["messages"]) == len(second.messages)


def test_unreachable_server_gives_up_after_bounded_retries(settings, tools):
    import time

    from strop.serving.endpoint import Endpoint
    from tests.conftest import free_port

    endpoint = Endpoint(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", api_key="x", managed=False)
    agent = Agent.for_endpoint(settings, endpoint, tools, store=TrajectoryStore(settings.trajectories_path))
    began = time.monotonic()
    t = agent.run("What is 2 + 2?")
    assert time.monotonic() - began < 30
    assert t.status == "error" and "ConnectionError" in t.errors[0]
    assert agent.store.get(t.id).status == "error"


def test_context_rebuilds_exactly_what_the_model_read_before_each_action(settings, tools):
    from langchain_core.messages import convert_to_openai_messages

    from strop.training.pairs import decisions

    model = ScriptedModel(replies=[CALC, ANSWER])
    agent = Agent(settings, model, tools, model_name="scripted")
    trajectory = agent.run("What is 1234 * 5678?")
    for (history, _action, _read), call in zip(decisions(trajectory), model.calls, strict=True):
        read = [{"role": m["role"], "content": m["content"]} for m in convert_to_openai_messages(call["messages"])]
        assert agent.context(history) == read
