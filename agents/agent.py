"""An agent: the graph with its tools and model, and one logged trajectory for every run.

Sync use (CLI, chat): ``Agent.stream`` yields tool events as they happen; ``Agent.run`` returns the
trajectory. Async use (scenarios, rollouts): ``Agent.arun`` and ``Agent.run_many``, which keep many
episodes in flight so vLLM batches them; one failing episode never stops the others.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, ToolMessage, convert_to_openai_messages
from langgraph.types import Checkpointer

from strop.agents.graph import FINAL_ANSWER, ModelInput, build_agent, chat_model, new_run
from strop.agents.learned import open_learned
from strop.aio import at_most
from strop.config import SamplingSettings, Settings
from strop.serving.endpoint import Endpoint
from strop.tools.base import Tool
from strop.tools.toolkit import LazyMemory
from strop.trajectories import StepTiming, Trajectory, TrajectoryStore


@dataclass(frozen=True)
class Event:
    """Something a caller may show while a run goes on."""

    kind: str  # token (of the action being generated) | action | result | answer | budget | error | end
    text: str
    tool: str | None = None
    ok: bool = True
    trajectory: Trajectory | None = None  # on the "end" event


@dataclass(frozen=True)
class Task:
    """One prompt for a batch of episodes, with the ids a scenario or rollout links to its trajectory."""

    prompt: str
    scenario: str | None = None
    case_id: str | None = None


class Agent:
    """A tool-using LangGraph agent whose every run becomes a trajectory."""

    def __init__(self, settings: Settings, model: BaseChatModel, tools: Sequence[Tool], *, model_name: str,
                 store: TrajectoryStore | None = None, checkpointer: Checkpointer = None,
                 adapter: str | None = None, sampling: SamplingSettings | None = None,
                 memory: LazyMemory | None = None):
        self.sampling = sampling or settings.sampling
        self.model_name = model_name
        self.adapter = adapter
        self.tools = list(tools)
        learned = open_learned(settings, self.tools, memory)  # None unless [agent] learned_exemplars > 0
        # shared with the graph: one build
        self.shown = ModelInput(self.tools, settings.agent.exemplars, learned, settings.prompts_dir)
        self.graph = build_agent(model, self.tools, max_steps=settings.agent.max_steps,
                                 action_max_tokens=settings.agent.action_max_tokens,
                                 min_tool_steps=settings.agent.min_tool_steps, checkpointer=checkpointer,
                                 memory_answer=settings.agent.memory_answer,
                                 search_min_score=settings.agent.search_min_score,
                                 model_input=self.shown)
        self.store = store
        self.persistent = checkpointer is not None

    def context(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Everything the model reads before its next action after ``history`` (role/content messages)."""
        return self.shown.context(history)

    @classmethod
    def for_endpoint(cls, settings: Settings, endpoint: Endpoint, tools: Sequence[Tool], *,
                     adapter: str | None = None, sampling: SamplingSettings | None = None, **kwargs) -> Agent:
        """An agent whose model is served at ``endpoint`` (with a LoRA ``adapter`` if given)."""
        sampling = sampling or settings.sampling
        # vLLM serves a LoRA adapter under its own name, beside the base model.
        served = endpoint.serving(adapter)
        model = chat_model(served, sampling, settings.request_timeout_s)
        return cls(settings, model, tools, model_name=endpoint.model, adapter=adapter, sampling=sampling, **kwargs)

    # -- sync ------------------------------------------------------------------------------
    def stream(self, question: str, thread_id: str | None = None, task: Task | None = None) -> Iterator[Event]:
        """Run one episode, yielding tool events and the action's tokens, then an ``end`` event with the trajectory."""
        return self._episode(question, thread_id, task, ["messages", "updates", "values"])

    def run(self, question: str, thread_id: str | None = None, task: Task | None = None) -> Trajectory:
        """Run one episode and return its trajectory."""
        # Only the final state: without "messages" the model is not asked to stream tokens nobody reads.
        *_, end = self._episode(question, thread_id, task, ["values"])
        return end.trajectory

    def _episode(self, question: str, thread_id: str | None, task: Task | None, modes: list[str]) -> Iterator[Event]:
        began, state = time.time(), None
        config = self._config(thread_id)
        try:
            for mode, payload in self.graph.stream(new_run(question), config, stream_mode=modes):
                if mode == "values":
                    state = payload
                elif mode == "messages":
                    chunk, _meta = payload
                    if isinstance(chunk, AIMessageChunk) and isinstance(chunk.content, str) and chunk.content:
                        yield Event("token", chunk.content)
                else:
                    yield from _events(payload)
        except Exception as exc:  # a bug or a broken tool must still leave a record
            state = _failed(state, question, exc)
        trajectory = self._record(question, state, config, task, began)
        yield Event("end", trajectory.answer or "", trajectory=trajectory, ok=trajectory.status == "answered")

    # -- async -----------------------------------------------------------------------------
    async def arun(self, task: Task, thread_id: str | None = None) -> Trajectory:
        """Run one episode without blocking the event loop."""
        began, config = time.time(), self._config(thread_id)
        try:
            state = await self.graph.ainvoke(new_run(task.prompt), config)
        except Exception as exc:
            state = _failed(None, task.prompt, exc)
        trajectory = self._trajectory(task.prompt, state, config, task, began)
        if self.store is not None:  # the fsync waits in a thread while other episodes go on
            await asyncio.to_thread(self.store.append, trajectory)
        return trajectory

    async def run_many(self, tasks: Iterable[Task | str], concurrency: int = 8) -> list[Trajectory]:
        """Run episodes with up to ``concurrency`` in flight; results keep the order of ``tasks``."""
        return await at_most(concurrency, (self.arun(t if isinstance(t, Task) else Task(t)) for t in tasks))

    # -- records ---------------------------------------------------------------------------
    def _config(self, thread_id: str | None) -> dict[str, Any]:
        # Without a checkpointer every run is its own thread; the id still links the trajectory.
        return {"configurable": {"thread_id": thread_id or uuid.uuid4().hex}, "recursion_limit": 100}

    def _record(self, question: str, state: dict[str, Any], config: dict, task: Task | None,
                began: float) -> Trajectory:
        trajectory = self._trajectory(question, state, config, task, began)
        if self.store is not None:
            self.store.append(trajectory)
        return trajectory

    def _trajectory(self, question: str, state: dict[str, Any], config: dict, task: Task | None,
                    began: float) -> Trajectory:
        task = task or Task(question)
        return Trajectory(
            prompt=question,
            messages=convert_to_openai_messages(state["messages"]),
            status=state.get("status") or "error",
            answer=state.get("answer"),
            model=self.model_name,
            adapter=self.adapter,
            sampling=self.sampling.model_dump(),
            steps=[StepTiming(**t) for t in state.get("timings", [])],
            errors=list(state.get("errors", [])),
            answered_from=state.get("answered_from"),
            thread_id=config["configurable"]["thread_id"] if self.persistent else None,
            scenario=task.scenario,
            case_id=task.case_id,
            created_at=began,
            duration_s=time.time() - began,
        )


def _events(update: dict[str, Any]) -> Iterator[Event]:
    for node, change in update.items():
        if not change:
            continue
        for message in change.get("messages", []):
            if isinstance(message, AIMessage) and message.tool_calls:
                call = message.tool_calls[0]
                if call["name"] != FINAL_ANSWER:
                    yield Event("action", _brief(call["args"]), tool=call["name"])
            elif isinstance(message, AIMessage) and message.invalid_tool_calls:
                yield Event("action", message.invalid_tool_calls[0]["error"], ok=False)
            elif isinstance(message, ToolMessage):
                yield Event("result", str(message.content), tool=message.name, ok=message.status != "error")
        if change.get("status") == "answered":
            yield Event("answer", change["answer"])
        elif node == "out_of_budget":
            yield Event("budget", change["messages"][-1].content, ok=False)
        elif change.get("status") == "error":
            yield Event("error", change["errors"][-1], ok=False)


def _failed(state: dict[str, Any] | None, question: str, exc: Exception) -> dict[str, Any]:
    state = dict(state or {"messages": new_run(question)["messages"], "timings": [], "errors": []})
    return state | {"status": "error", "errors": [*state.get("errors", []), f"{type(exc).__name__}: {exc}"]}


def _brief(args: dict[str, Any]) -> str:
    return ", ".join(f"{v}" if len(args) == 1 else f"{k}={v}" for k, v in args.items())


def open_agent(settings: Settings, progress=None, *, sampling: SamplingSettings | None = None,
               adapter: str | None = None) -> Agent:
    """The agent the CLI uses: standard tools, trajectories logged, threads kept in the state folder.

    It answers with ``adapter``, or the active (promoted) adapter when None; ``"base"`` means none.
    """
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    from strop.serving.adapters import resolve_adapter
    from strop.serving.endpoint import connect
    from strop.tools.toolkit import standard_tools

    endpoint = connect(settings, progress)
    adapter = resolve_adapter(settings, endpoint, adapter)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    threads = SqliteSaver(sqlite3.connect(settings.threads_path, check_same_thread=False))
    memory = LazyMemory(settings)
    return Agent.for_endpoint(settings, endpoint, standard_tools(settings, memory), adapter=adapter,
                              sampling=sampling, store=TrajectoryStore(settings.trajectories_path),
                              checkpointer=threads, memory=memory)
