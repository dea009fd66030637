"""The agent graph: a LangGraph ``StateGraph`` that acts with tools, one JSON action per step.

    START -> act -> run_tool -> act -> ... -> END
               \\-> END (model unreachable)   \\-> out_of_budget -> END

``act`` asks the model for the next action under a JSON schema (vLLM structured output), so even a
135M model emits a well-formed call of a declared tool. The action's raw text is kept as the
assistant message's content (it is exactly what the model generated, which is what preference
training needs) with the parsed call in ``tool_calls``; a malformed action becomes an
``invalid_tool_calls`` entry and an error result the model sees on its next step.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import yaml
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_openai_messages,
)
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer

from strop.agents.model import OpenAICompatibleChat
from strop.config import SamplingSettings
from strop.serving.endpoint import Endpoint
from strop.tools.base import Tool, ToolError, action_schema, parse_action

if TYPE_CHECKING:
    from strop.agents.learned import LearnedExemplars

PROMPTS_DIR = Path(__file__).parent / "prompts"
FINAL_ANSWER = "final_answer"


class AgentState(MessagesState):
    """The conversation plus what one run needs; ``steps``, ``answer``, ``status``, ``timings`` reset per run."""

    steps: int
    answer: str | None
    status: str | None  # None while running, then answered | budget_exhausted | error
    timings: list[dict[str, Any]]
    errors: list[str]


def load_prompt(name: str) -> str:
    """Read ``prompts/<name>.md``."""
    return (PROMPTS_DIR / f"{name}.md").read_text().strip()


def chat_model(endpoint: Endpoint, sampling: SamplingSettings, timeout_s: float = 120.0,
               max_retries: int = 2, **options: Any) -> OpenAICompatibleChat:
    """A LangChain chat model talking to ``endpoint`` (vLLM or any OpenAI-compatible server).

    The openai client retries connection errors and 5xx answers ``max_retries`` times with backoff;
    ``options`` go to ``ChatOpenAI`` (e.g. ``http_async_client``).
    """
    return OpenAICompatibleChat(base_url=endpoint.base_url, api_key=endpoint.api_key, model=endpoint.model,
                                temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_tokens, timeout=timeout_s, max_retries=max_retries,
                                stream_usage=True, **options)


def new_run(question: str) -> dict[str, Any]:
    """The graph input that starts a run (and resets the per-run fields of a resumed thread)."""
    return {"messages": [HumanMessage(question)], "steps": 0, "answer": None, "status": None,
            "timings": [], "errors": []}


def system_prompt(tools: Sequence[Tool]) -> str:
    listing = "\n".join(f"- {t.name}: {t.description}" for t in tools)
    return load_prompt("agent").replace("{tools}", listing)


def load_exemplars(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """Few-shot episodes from ``prompts/exemplars.yaml`` that use only the tools given."""
    names = {t.name for t in tools}
    episodes = yaml.safe_load((PROMPTS_DIR / "exemplars.yaml").read_text())
    return [e for e in episodes if {step["action"]["tool"] for step in e["steps"]} <= names]


class Exemplars:
    """Few-shot episodes as ready-made messages, built once: every step only puts them in order.

    Small models copy the nearest example's choice of tool, so the closest example goes next to the question.
    """

    def __init__(self, episodes: Sequence[dict[str, Any]]):
        self._episodes = [(_shape(e["question"]), _episode_messages(e, n)) for n, e in enumerate(episodes)]

    def for_question(self, question: str = "") -> list[BaseMessage]:
        shape = _shape(question)
        ranked = sorted(self._episodes, key=lambda episode: _jaccard(episode[0], shape))
        return [message for _, messages in ranked for message in messages]


def exemplar_messages(episodes: Sequence[dict[str, Any]], question: str = "") -> list[BaseMessage]:
    """The episodes as a conversation, the one most like ``question`` last."""
    return Exemplars(episodes).for_question(question)


def _episode_messages(episode: dict[str, Any], number: int, kind: str = "ex") -> list[BaseMessage]:
    # Fixed call ids: the chat template shows only roles and contents, and shared messages must not vary.
    messages: list[BaseMessage] = [HumanMessage(episode["question"])]
    for step_number, step in enumerate(episode["steps"]):
        call_id, action = f"{kind}-{number}-{step_number}", step["action"]
        messages.append(AIMessage(content=_dump(action), tool_calls=[
            {"name": action["tool"], "args": action["args"], "id": call_id, "type": "tool_call"}]))
        if "result" in step:
            messages.append(ToolMessage(step["result"], tool_call_id=call_id, name=action["tool"]))
    return messages


def learned_messages(episodes: Sequence[dict[str, Any]]) -> list[BaseMessage]:
    """Learned episodes (``agents/learned.py``) as a conversation, in the order given."""
    return [m for n, e in enumerate(episodes) for m in _episode_messages(e, n, "learned")]


class ModelInput:
    """What the model reads before each action: the system prompt, the file exemplars, the learned ones
    (retrieved from memory for the question, if on), then the conversation; nearest the question last.
    Preference pairs rebuild their prompts with it, so training sees what acting saw."""

    def __init__(self, tools: Sequence[Tool], exemplars: bool = True, learned: LearnedExemplars | None = None):
        self.system = SystemMessage(system_prompt(tools))
        self.examples = Exemplars(load_exemplars(tools) if exemplars else [])
        self.learned = learned

    def prefix(self, question: str) -> list[BaseMessage]:
        learned = self.learned.messages(question) if self.learned else []
        return [self.system, *self.examples.for_question(question), *learned]

    def context(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Everything the model reads before its next action after ``history`` (role/content messages)."""
        question = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
        prefix = convert_to_openai_messages(self.prefix(question))
        return [*({"role": m["role"], "content": m["content"]} for m in prefix), *history]

    async def prepare(self, question: str) -> None:
        """Retrieve the learned exemplars for ``question`` in a thread, so embedding it never blocks the loop."""
        if self.learned is not None:
            await asyncio.to_thread(self.learned.messages, question)


def build_agent(model: BaseChatModel, tools: Sequence[Tool], *, max_steps: int = 6,
                action_max_tokens: int = 256, exemplars: bool = True, min_tool_steps: int = 1,
                checkpointer: Checkpointer = None, model_input: ModelInput | None = None) -> CompiledStateGraph:
    """Compile the agent graph. ``tools`` must include a ``final_answer`` tool.

    ``model_input`` is given by callers that rebuild contexts themselves (default: built from ``tools``
    and ``exemplars``).

    For the first ``min_tool_steps`` actions ``final_answer`` is left out of the schema: small models
    otherwise answer at once from their own guess instead of calculating or looking things up.
    """
    by_name = {t.name: t for t in tools}
    if FINAL_ANSWER not in by_name:
        raise ValueError("the agent needs a final_answer tool")
    shown = model_input or ModelInput(tools, exemplars)
    actor = _constrained(model, tools, action_max_tokens)
    tool_actor = _constrained(model, [t for t in tools if t.name != FINAL_ANSWER], action_max_tokens)

    def prompt(state: AgentState) -> tuple[Runnable, list[BaseMessage]]:
        chooser = tool_actor if state["steps"] < min_tool_steps else actor
        return chooser, [*shown.prefix(_question(state)), *state["messages"]]

    def act(state: AgentState) -> dict:
        began = time.perf_counter()
        chooser, messages = prompt(state)
        try:
            reply = chooser.invoke(messages)
        except openai.APIError as exc:  # retried with backoff inside the client already
            return _model_failed(state, exc, began)
        return _acted(state, reply, tools, began)

    async def aact(state: AgentState) -> dict:
        # The async twin, for ainvoke: a sync node would wait on the model in the event loop's default
        # thread pool (min(32, cores + 4) threads: 6 on 2 cores), capping the episodes in flight.
        began = time.perf_counter()
        await shown.prepare(_question(state))
        chooser, messages = prompt(state)
        try:
            reply = await chooser.ainvoke(messages)
        except openai.APIError as exc:
            return _model_failed(state, exc, began)
        return _acted(state, reply, tools, began)

    def run_tool(state: AgentState) -> dict:
        message: AIMessage = state["messages"][-1]
        began = time.perf_counter()
        if message.invalid_tool_calls:
            bad = message.invalid_tool_calls[0]
            result = ToolMessage(f"Error: {bad['error']} Reply with one JSON action.", tool_call_id=bad["id"],
                                 name="invalid_action", status="error")
            return {"messages": [result], "timings": [*state["timings"], _timing("tool", "invalid_action", began)]}
        call = message.tool_calls[0]
        tool = by_name[call["name"]]
        try:
            output, status = tool.run(call["args"]), "success"
        except ToolError as exc:
            output, status = f"Error: {exc}", "error"
        update: dict[str, Any] = {"timings": [*state["timings"], _timing(
            "tool", tool.name, began, error=output if status == "error" else None)]}
        if call["name"] == FINAL_ANSWER and status == "success":
            return update | {"answer": output, "status": "answered"}
        return update | {"messages": [ToolMessage(output, tool_call_id=call["id"], name=tool.name, status=status)]}

    def out_of_budget(state: AgentState) -> dict:
        note = f"I could not finish within {max_steps} steps."
        return {"status": "budget_exhausted", "messages": [AIMessage(note)]}

    def after_act(state: AgentState) -> str:
        return END if state["status"] == "error" else "run_tool"

    def after_tool(state: AgentState) -> str:
        if state["status"] == "answered":
            return END
        return "out_of_budget" if state["steps"] >= max_steps else "act"

    graph = StateGraph(AgentState)
    graph.add_node("act", _Node(act, aact))
    graph.add_node("run_tool", run_tool)
    graph.add_node("out_of_budget", out_of_budget)
    graph.add_edge(START, "act")
    graph.add_conditional_edges("act", after_act, ["run_tool", END])
    graph.add_conditional_edges("run_tool", after_tool, ["act", "out_of_budget", END])
    graph.add_edge("out_of_budget", END)
    return graph.compile(checkpointer=checkpointer)


class _Node(Runnable):
    """A graph node with a sync body for invoke/stream and an async one for ainvoke/astream.

    LangGraph takes one or the other from a plain function; ``RunnableLambda`` takes both but inspects
    signatures and opens a traced run of its own on every call (about 0.5 ms a step on 2 busy cores).
    """

    def __init__(self, func, afunc):
        self.func, self.afunc, self.name = func, afunc, func.__name__

    def invoke(self, state: AgentState, config: RunnableConfig | None = None, **_: Any) -> dict:
        return self.func(state)

    async def ainvoke(self, state: AgentState, config: RunnableConfig | None = None, **_: Any) -> dict:
        return await self.afunc(state)


def _question(state: AgentState) -> str:
    return next(m.content for m in reversed(state["messages"]) if isinstance(m, HumanMessage))


def _acted(state: AgentState, reply: BaseMessage, tools: Sequence[Tool], began: float) -> dict:
    usage = reply.usage_metadata or {}
    timing = _timing("model", reply.response_metadata.get("model_name", ""), began,
                     usage.get("input_tokens", 0), usage.get("output_tokens", 0))
    return {"messages": [_action_message(str(reply.content), tools)], "steps": state["steps"] + 1,
            "timings": [*state["timings"], timing]}


def _model_failed(state: AgentState, exc: openai.APIError, began: float) -> dict:
    error = f"model call failed: {type(exc).__name__}: {exc}"
    return {"status": "error", "errors": [*state["errors"], error],
            "timings": [*state["timings"], _timing("model", "model", began, error=error)]}


def _constrained(model: BaseChatModel, tools: Sequence[Tool], max_tokens: int):
    """``model`` bound to answer only with a JSON action of one of ``tools`` (vLLM structured output)."""
    schema = {"name": "action", "schema": action_schema(tools), "strict": True}
    # Sent as a plain request field: LangChain's own response_format handling would parse the reply
    # itself and raise on a truncated action, which the graph turns into a message to the model instead.
    return model.bind(max_tokens=max_tokens,
                      extra_body={"response_format": {"type": "json_schema", "json_schema": schema}})


def _action_message(text: str, tools: Sequence[Tool]) -> AIMessage:
    call_id = f"call-{uuid.uuid4().hex[:12]}"
    try:
        tool, args = parse_action(text, tools)
    except ToolError as exc:
        return AIMessage(content=text, invalid_tool_calls=[
            {"name": "invalid_action", "args": text, "id": call_id, "error": str(exc), "type": "invalid_tool_call"}])
    return AIMessage(content=text, tool_calls=[{"name": tool.name, "args": args, "id": call_id, "type": "tool_call"}])


def _timing(kind: str, name: str, began: float, prompt_tokens: int = 0, completion_tokens: int = 0,
            error: str | None = None) -> dict[str, Any]:
    return {"kind": kind, "name": name, "latency_ms": (time.perf_counter() - began) * 1000,
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "error": error}


def _jaccard(words_a: set[str], words_b: set[str]) -> float:
    """Overlap of two word shapes (see ``_shape``)."""
    return len(words_a & words_b) / max(1, len(words_a | words_b))


def _shape(text: str) -> set[str]:
    """The words of ``text``, every number counting as the same word."""
    return {"<num>" if w[0].isdigit() else w for w in re.findall(r"\d[\d.,]*|[a-z]+|[^\sa-z\d]", text.lower())
            if w not in "?.!,"}


def _dump(action: dict) -> str:
    return json.dumps(action, separators=(",", ":"))  # as vLLM emits it without free whitespace
