"""The agent graph: a LangGraph ``StateGraph`` that acts with tools, one JSON action per step.

    START -> act -> run_tool -> act -> ... -> END
               \\-> END (model unreachable)   \\-> out_of_budget -> END
                             \\-> answer -> END (after a memory search, for a question the memory knows)

``act`` asks the model for the next action under a JSON schema (vLLM structured output), so even a
135M model emits a well-formed call of a declared tool. The action's raw text is kept as the
assistant message's content (it is exactly what the model generated, which is what preference
training needs) with the parsed call in ``tool_calls``; a malformed action becomes an
``invalid_tool_calls`` entry and an error result the model sees on its next step.

A small model loops and guesses, so the graph repairs what it can (``grounding.py``): a free-text
argument is cut where it starts repeating itself, a degenerate search query becomes the question, an
action repeated within a run is not run again (the model must answer), and ``sources`` are filled by
strop from the passages that hold the answer. A question whose closest memory passage is similar
enough is searched first, and the answer after that search is made from the passages (``answer``).
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

from strop.agents.grounding import (
    NOT_FOUND,
    Passage,
    checked_answer,
    clean_answer,
    cut_loop,
    focus,
    names_in,
    parse_passages,
    personal_question,
    plain_text,
    ranked_sentences,
    rare_names,
    span_choices,
    supporting,
    usable_query,
)
from strop.agents.model import OpenAICompatibleChat
from strop.config import SamplingSettings
from strop.prompts import PromptTemplate, load_prompt, prompt_file
from strop.serving.endpoint import Endpoint
from strop.tools.base import Tool, ToolError, action_schema, parse_action

if TYPE_CHECKING:
    from strop.agents.learned import LearnedExemplars

FINAL_ANSWER = "final_answer"
SEARCH = "search_memory"
ANSWER_MAX_TOKENS = 48  # a grounded answer is a few words; more is a loop
# Sentences of the passages the grounded answer reads (measured on rag + notes, all 90 cases: whole passages
# 11/40 and 37/50, the 3 sentences sharing most words with the question 15/40 and 37/50, only the best one
# 14/40 and 30/50; on the train split, the 3 best-first 8/22 and 19/31 and without sentences sharing no word
# 7/22 and 21/31, against 7/22 and 25/31 for the 3 in passage order, kept).
FOCUS_SENTENCES = 3
# The free-text calls of a memory question get a frequency penalty (loops there repeat tokens): measured
# on rag + notes, all 90 cases, the query's penalty answered 2 more rag cases (17/40 against 15/40, none
# fewer); the answer's changed no answer. Other actions keep the sampling settings' penalty (default 0): at
# 0.5 on every action, looping arguments fell from 71 to 30 over the 184 gate and test cases, but 2 of 67 tools
# cases were lost (their arguments copy repeated values: a DNA sequence, lists of numbers) and none won.
ANSWER_FREQUENCY_PENALTY = 0.5
QUERY_FREQUENCY_PENALTY = 0.5
# The answer read off the passages is greedy whatever the sampling: serving asks it greedily anyway, and in
# rollouts (sampled) the outcome after a search then depends on the search alone, so a pair's credit goes to
# the query that found the passage, not to a lucky draw of the answer made after it.
ANSWER_TEMPERATURE = 0.0
MAX_PROBE = 200  # characters of the search for a question's names (the search query's bound)
REPEATED = "Error: this exact action was already taken in this run; its result is above. Give the final answer now."


class AgentState(MessagesState):
    """The conversation plus what one run needs; ``steps``, ``answer``, ``status``, ``timings`` reset per run."""

    steps: int
    answer: str | None
    status: str | None  # None while running, then answered | budget_exhausted | error
    timings: list[dict[str, Any]]
    errors: list[str]
    passages: list[dict[str, Any]]  # what memory searches returned in this run (id, score, text)
    memory_question: bool  # the memory holds a passage close to the question: search first, answer from it
    answered_from: dict[str, Any] | None  # the plain call a memory answer was made by (see _answered)


def chat_model(endpoint: Endpoint, sampling: SamplingSettings, timeout_s: float = 120.0,
               max_retries: int = 2, **options: Any) -> OpenAICompatibleChat:
    """A LangChain chat model talking to ``endpoint`` (vLLM or any OpenAI-compatible server).

    The openai client retries connection errors and 5xx answers ``max_retries`` times with backoff;
    ``options`` go to ``ChatOpenAI`` (e.g. ``http_async_client``).
    """
    if sampling.repetition_penalty != 1.0:  # a vLLM extension of the OpenAI request
        options["extra_body"] = {"repetition_penalty": sampling.repetition_penalty, **options.get("extra_body", {})}
    return OpenAICompatibleChat(base_url=endpoint.base_url, api_key=endpoint.api_key, model=endpoint.model,
                                temperature=sampling.temperature, top_p=sampling.top_p,
                                frequency_penalty=sampling.frequency_penalty or None,
                                max_tokens=sampling.max_tokens, timeout=timeout_s, max_retries=max_retries,
                                stream_usage=True, **options)


def new_run(question: str) -> dict[str, Any]:
    """The graph input that starts a run (and resets the per-run fields of a resumed thread)."""
    return {"messages": [HumanMessage(question)], "steps": 0, "answer": None, "status": None,
            "timings": [], "errors": [], "passages": [], "memory_question": False, "answered_from": None}


def system_prompt(tools: Sequence[Tool], prompts_dir: Path | None = None) -> str:
    listing = "\n".join(f"- {t.name}: {t.description}" for t in tools)
    return prompt_file("strop.agents", "agent.md", prompts_dir).strip().replace("{tools}", listing)


def load_exemplars(tools: Sequence[Tool], prompts_dir: Path | None = None) -> list[dict[str, Any]]:
    """Few-shot episodes from ``prompts/exemplars.yaml`` that use only the tools given."""
    names = {t.name for t in tools}
    episodes = yaml.safe_load(prompt_file("strop.agents", "exemplars.yaml", prompts_dir))
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

    def __init__(self, tools: Sequence[Tool], exemplars: bool = True, learned: LearnedExemplars | None = None,
                 prompts_dir: Path | None = None):
        self.system = SystemMessage(system_prompt(tools, prompts_dir))
        self.examples = Exemplars(load_exemplars(tools, prompts_dir) if exemplars else [])
        self.learned = learned
        self.grounded = load_prompt("strop.agents", "grounded", prompts_dir)  # the answer made from passages

    def prefix(self, question: str) -> list[BaseMessage]:
        learned = self.learned.messages(question) if self.learned else []
        return [self.system, *self.examples.for_question(question), *learned]

    def context(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Everything the model reads before its next action after ``history`` (role/content messages)."""
        question = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
        return [*role_and_content(self.prefix(question)), *history]

    async def prepare(self, question: str) -> None:
        """Retrieve the learned exemplars for ``question`` in a thread, so embedding it never blocks the loop."""
        if self.learned is not None:
            await asyncio.to_thread(self.learned.messages, question)


def build_agent(model: BaseChatModel, tools: Sequence[Tool], *, max_steps: int = 6,
                action_max_tokens: int = 256, exemplars: bool = True, min_tool_steps: int = 1,
                checkpointer: Checkpointer = None, model_input: ModelInput | None = None,
                memory_answer: str = "grounded", search_min_score: float = 0.35) -> CompiledStateGraph:
    """Compile the agent graph. ``tools`` must include a ``final_answer`` tool.

    ``model_input`` is given by callers that rebuild contexts themselves (default: built from ``tools``
    and ``exemplars``).

    For the first ``min_tool_steps`` actions ``final_answer`` is left out of the schema: small models
    otherwise answer at once from their own guess instead of calculating or looking things up.

    Two actions in a row cut off at ``action_max_tokens`` end the run (``budget_exhausted``): a model that
    looped twice loops again (in 83 such runs of the four suites, 78 of 80 third actions were cut off too
    and none passed), and each try costs a whole action's tokens.

    A question whose closest memory passage scores at least ``search_min_score`` (the search tool's
    ``relevance``), a question about the user's own things, or one naming something the memory holds that is
    no English word (``grounding.personal_question``, ``grounding.rare_names``) must start with a memory
    search; after it the answer is made from the passages as ``memory_answer`` says: ``grounded`` (a plain
    call over them, checked by ``grounding.checked_answer``), ``spans`` (constrained to their spans) or
    ``agent`` (the agent's own next actions).
    """
    by_name = {t.name: t for t in tools}
    if FINAL_ANSWER not in by_name:
        raise ValueError("the agent needs a final_answer tool")
    if memory_answer not in ("grounded", "spans", "agent"):
        raise ValueError(f"memory_answer must be grounded, spans or agent, not {memory_answer!r}")
    shown = model_input or ModelInput(tools, exemplars)
    actor = _constrained(model, tools, action_max_tokens)
    tool_actor = _constrained(model, [t for t in tools if t.name != FINAL_ANSWER], action_max_tokens)
    answer_actor = _constrained(model, [by_name[FINAL_ANSWER]], action_max_tokens)
    search = by_name.get(SEARCH)
    search_actor = _constrained(model, [search], action_max_tokens, QUERY_FREQUENCY_PENALTY) if search else None
    limits = _text_limits(tools)

    def memory_question(state: AgentState) -> bool:
        if state["steps"] > 0:
            return state.get("memory_question", False)
        relevance = getattr(search, "relevance", None)
        if relevance is None:
            return False
        question = _question(state)
        return relevance(question) >= search_min_score or personal_question(question) or names_known(question)

    def names_known(question: str) -> bool:
        """Whether the memory holds a name of the question that is no English word ("Strop"): the embedding
        (English) misses such questions when they are asked in another language."""
        names = rare_names(question)
        if not names:
            return False
        try:
            found = parse_passages(search.run({"query": " ".join(names)[:MAX_PROBE]}))
        except ToolError:
            return False
        return bool(names_in(found, names))

    def prompt(state: AgentState, searched_first: bool) -> tuple[Runnable, list[BaseMessage]]:
        if searched_first and state["steps"] == 0:
            chooser = search_actor
        elif _repeated(state["messages"][-1]):
            chooser = answer_actor
        else:
            chooser = tool_actor if state["steps"] < min_tool_steps else actor
        return chooser, [*shown.prefix(_question(state)), *state["messages"]]

    def act(state: AgentState) -> dict:
        began = time.perf_counter()
        first = memory_question(state)
        chooser, messages = prompt(state, first)
        try:
            reply = chooser.invoke(messages)
        except openai.APIError as exc:  # retried with backoff inside the client already
            return _model_failed(state, exc, began)
        return _acted(state, reply, tools, began, limits) | {"memory_question": first}

    async def aact(state: AgentState) -> dict:
        # The async twin, for ainvoke: a sync node would wait on the model in the event loop's default
        # thread pool (min(32, cores + 4) threads: 6 on 2 cores), capping the episodes in flight.
        began = time.perf_counter()
        await shown.prepare(_question(state))
        first = await asyncio.to_thread(memory_question, state) if state["steps"] == 0 else memory_question(state)
        chooser, messages = prompt(state, first)
        try:
            reply = await chooser.ainvoke(messages)
        except openai.APIError as exc:
            return _model_failed(state, exc, began)
        return _acted(state, reply, tools, began, limits) | {"memory_question": first}

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
        if call["name"] != FINAL_ANSWER and _taken_before(state["messages"], call):
            result = ToolMessage(REPEATED, tool_call_id=call["id"], name=tool.name, status="error",
                                 artifact={"repeated": True})
            return {"messages": [result], "timings": [*state["timings"], _timing("tool", tool.name, began,
                                                                                   error="repeated action")]}
        try:
            output, status = tool.run(call["args"]), "success"
        except ToolError as exc:
            output, status = f"Error: {exc}", "error"
        update: dict[str, Any] = {"timings": [*state["timings"], _timing(
            "tool", tool.name, began, error=output if status == "error" else None)]}
        if call["name"] == FINAL_ANSWER and status == "success":
            return update | {"answer": output, "status": "answered"}
        if call["name"] == SEARCH and status == "success":
            update["passages"] = [*state.get("passages", []), *(vars(p) for p in parse_passages(output))]
        return update | {"messages": [ToolMessage(output, tool_call_id=call["id"], name=tool.name, status=status)]}

    def answer_request(state: AgentState) -> tuple[Runnable, list[BaseMessage], list[Passage]] | None:
        """The call that answers from the last search's passages (None: nothing was found)."""
        found = parse_passages(str(state["messages"][-1].content))
        if not found:
            return None
        messages = grounded_messages(shown.grounded, _question(state), focus(found, _question(state),
                                                                             FOCUS_SENTENCES))
        if memory_answer == "spans":
            return model.bind(max_tokens=ANSWER_MAX_TOKENS, temperature=ANSWER_TEMPERATURE, extra_body=_json_schema(
                _span_schema(found), getattr(model, "extra_body", None))), messages, found
        return model.bind(max_tokens=ANSWER_MAX_TOKENS, temperature=ANSWER_TEMPERATURE,
                          frequency_penalty=ANSWER_FREQUENCY_PENALTY), messages, found

    def checked(state: AgentState, reply: BaseMessage, found: list[Passage]) -> str:
        """The reply's answer; a grounded one replaced by the sentence that answers the question when it
        lacks the time, date, number or name that sentence holds, or by the sentences read when it only
        repeats the question (``checked_answer``)."""
        text = _reply_answer(reply, memory_answer)
        if memory_answer != "grounded":
            return text
        question = _question(state)
        return checked_answer(clean_answer(text, limits.get((FINAL_ANSWER, "answer"), 300)), question,
                              ranked_sentences(found, question), FOCUS_SENTENCES)

    def answer(state: AgentState) -> dict:
        began, request = time.perf_counter(), answer_request(state)
        if request is None:
            return _answered(state, None, NOT_FOUND, [], by_name[FINAL_ANSWER], began, limits)
        answerer, messages, found = request
        try:
            reply = answerer.invoke(messages)
        except openai.APIError as exc:
            return _model_failed(state, exc, began)
        return _answered(state, reply, checked(state, reply, found), found, by_name[FINAL_ANSWER], began, limits,
                         messages)

    async def aanswer(state: AgentState) -> dict:
        began, request = time.perf_counter(), answer_request(state)
        if request is None:
            return _answered(state, None, NOT_FOUND, [], by_name[FINAL_ANSWER], began, limits)
        answerer, messages, found = request
        try:
            reply = await answerer.ainvoke(messages)
        except openai.APIError as exc:
            return _model_failed(state, exc, began)
        return _answered(state, reply, checked(state, reply, found), found, by_name[FINAL_ANSWER], began, limits,
                         messages)

    def out_of_budget(state: AgentState) -> dict:
        note = (f"I stopped: my last two actions ran past {action_max_tokens} tokens." if looping(state)
                else f"I could not finish within {max_steps} steps.")
        return {"status": "budget_exhausted", "messages": [AIMessage(note)]}

    def looping(state: AgentState) -> bool:
        """Whether the last two actions were both cut off at the token budget."""
        actions = [t for t in state["timings"] if t["kind"] == "model"][-2:]
        return len(actions) == 2 and all(t["completion_tokens"] >= action_max_tokens for t in actions)

    def after_act(state: AgentState) -> str:
        return END if state["status"] == "error" else "run_tool"

    def after_tool(state: AgentState) -> str:
        if state["status"] == "answered":
            return END
        last = state["messages"][-1]
        searched = isinstance(last, ToolMessage) and last.name == SEARCH and last.status == "success"
        if searched and not state.get("passages"):
            return "answer"  # nothing in memory: say so rather than let the model guess
        if searched and memory_answer != "agent" and state.get("memory_question"):
            return "answer"
        return "out_of_budget" if state["steps"] >= max_steps or looping(state) else "act"

    graph = StateGraph(AgentState)
    graph.add_node("act", _Node(act, aact))
    graph.add_node("run_tool", run_tool)
    graph.add_node("answer", _Node(answer, aanswer))
    graph.add_node("out_of_budget", out_of_budget)
    graph.add_edge(START, "act")
    graph.add_conditional_edges("act", after_act, ["run_tool", END])
    graph.add_conditional_edges("run_tool", after_tool, ["act", "answer", "out_of_budget", END])
    graph.add_edge("answer", END)
    graph.add_edge("out_of_budget", END)
    return graph.compile(checkpointer=checkpointer)


def role_and_content(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """``messages`` as the model reads them: OpenAI role/content pairs, without call ids or metadata."""
    return [{"role": m["role"], "content": m["content"]} for m in convert_to_openai_messages(list(messages))]


def grounded_messages(prompt: PromptTemplate, question: str, passages: Sequence[Passage]) -> list[BaseMessage]:
    """A plain request to answer ``question`` from ``passages`` alone, in a few words.

    No worked examples: with two of them (answers of a few words) the 135M model copied their shape and
    answered from the wrong note more often (notes train split 11/31 instead of 24/31)."""
    notes = "\n".join(f"- {plain_text(p.text)}" for p in passages)
    system, user = prompt.messages(notes=notes, question=question)
    return [SystemMessage(system["content"]), HumanMessage(user["content"])]


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


def _acted(state: AgentState, reply: BaseMessage, tools: Sequence[Tool], began: float,
           limits: dict[tuple[str, str], int]) -> dict:
    message = _action_message(str(reply.content), tools)
    if message.tool_calls:
        message = _repaired(message, _question(state), _found(state), limits)
    return {"messages": [message], "steps": state["steps"] + 1,
            "timings": [*state["timings"], _model_timing(reply, began)]}


def _model_timing(reply: BaseMessage, began: float) -> dict[str, Any]:
    usage = reply.usage_metadata or {}
    return _timing("model", reply.response_metadata.get("model_name", ""), began,
                   usage.get("input_tokens", 0), usage.get("output_tokens", 0))


def _repaired(message: AIMessage, question: str, found: list[Passage], limits: dict[tuple[str, str], int]) -> AIMessage:
    """The action with its free-text arguments cut where they loop, a degenerate search query replaced by
    the question, and a final answer's ``sources`` filled from the passages that hold it.

    The message's content stays what the model generated; the call holds what strop runs."""
    call = message.tool_calls[0]
    name, args = call["name"], dict(call["args"])
    for field, value in args.items():
        limit = limits.get((name, field))
        if not isinstance(value, str) or limit is None:
            continue
        if name == SEARCH and field == "query":
            args[field] = usable_query(value, question, limit)
        elif name == FINAL_ANSWER and field == "answer":
            args[field] = clean_answer(value, limit) or value[:limit]
        else:
            args[field] = cut_loop(value).strip() or value
    if name == FINAL_ANSWER and isinstance(args.get("answer"), str):
        args["sources"] = [p.id for p in supporting(args["answer"], found)]
    return AIMessage(content=message.content, tool_calls=[{**call, "args": args}],
                     response_metadata=message.response_metadata)


def _text_limits(tools: Sequence[Tool]) -> dict[tuple[str, str], int]:
    """(tool, argument) -> maxLength of the free-text string arguments (bounded at 100 characters or more)."""
    limits = {}
    for t in tools:
        for field, spec in t.args_schema().get("properties", {}).items():
            if spec.get("type") == "string" and spec.get("maxLength", 0) >= 100:
                limits[(t.name, field)] = spec["maxLength"]
    return limits


def _found(state: AgentState) -> list[Passage]:
    return [Passage(**p) for p in state.get("passages") or []]


def _repeated(message: BaseMessage) -> bool:
    return isinstance(message, ToolMessage) and bool((message.artifact or {}).get("repeated"))


def _taken_before(messages: Sequence[BaseMessage], call: dict[str, Any]) -> bool:
    """Whether an earlier action of this run called the same tool with the same arguments."""
    for message in reversed(messages[:-1]):
        if isinstance(message, HumanMessage):
            return False
        if isinstance(message, AIMessage) and message.tool_calls:
            earlier = message.tool_calls[0]
            if earlier["name"] == call["name"] and earlier["args"] == call["args"]:
                return True
    return False


def _reply_answer(reply: BaseMessage, memory_answer: str) -> str:
    text = str(reply.content)
    if memory_answer == "spans":
        try:
            chosen = json.loads(text).get("answer")
        except (json.JSONDecodeError, AttributeError):
            return text
        return chosen if isinstance(chosen, str) else text
    return text


def _answered(state: AgentState, reply: BaseMessage | None, text: str, found: list[Passage], final: Tool,
              began: float, limits: dict[tuple[str, str], int], asked: list[BaseMessage] | None = None) -> dict:
    """The final action made from an answer strop produced, with its supporting passages as sources.

    When a model call over ``asked`` made the answer, ``answered_from`` keeps that call's messages and the
    model's own reply: the final action is strop's, so training learns the answer step from these instead."""
    answer = clean_answer(text, limits.get((FINAL_ANSWER, "answer"), 300)) or NOT_FOUND
    sources = [] if answer == NOT_FOUND else [p.id for p in supporting(answer, found)]
    args = {"answer": answer, "sources": sources}
    call_id = f"call-{uuid.uuid4().hex[:12]}"
    message = AIMessage(content=_dump({"tool": FINAL_ANSWER, "args": args}), tool_calls=[
        {"name": FINAL_ANSWER, "args": args, "id": call_id, "type": "tool_call"}])
    timing = _model_timing(reply, began) if reply is not None else _timing("tool", FINAL_ANSWER, began)
    try:
        output = final.run(args)
    except ToolError as exc:  # cannot happen with a bounded answer and 8-hex ids; recorded if it does
        return {"messages": [message], "status": "error", "errors": [*state["errors"], str(exc)],
                "timings": [*state["timings"], timing]}
    made_by = None if reply is None or asked is None else {
        "prompt": role_and_content(asked),
        "reply": str(reply.content)}
    return {"messages": [message], "steps": state["steps"] + 1, "answer": output, "status": "answered",
            "timings": [*state["timings"], timing], "answered_from": made_by}


def _span_schema(passages: Sequence[Passage]) -> dict[str, Any]:
    return {"type": "object", "properties": {"answer": {"type": "string", "enum": span_choices(list(passages))}},
            "required": ["answer"], "additionalProperties": False}


def _json_schema(schema: dict[str, Any], extra_body: dict[str, Any] | None, name: str = "answer") -> dict[str, Any]:
    """A request's ``extra_body`` asking for JSON under ``schema``, beside what the model's own carries."""
    return {**(extra_body or {}), "response_format": {"type": "json_schema",
                                                      "json_schema": {"name": name, "schema": schema, "strict": True}}}


def _model_failed(state: AgentState, exc: openai.APIError, began: float) -> dict:
    error = f"model call failed: {type(exc).__name__}: {exc}"
    return {"status": "error", "errors": [*state["errors"], error],
            "timings": [*state["timings"], _timing("model", "model", began, error=error)]}


def _constrained(model: BaseChatModel, tools: Sequence[Tool], max_tokens: int, frequency_penalty: float | None = None):
    """``model`` bound to answer only with a JSON action of one of ``tools`` (vLLM structured output)."""
    # Sent as a plain request field: LangChain's own response_format handling would parse the reply
    # itself and raise on a truncated action, which the graph turns into a message to the model instead.
    penalty = {} if frequency_penalty is None else {"frequency_penalty": frequency_penalty}
    return model.bind(max_tokens=max_tokens, **penalty,
                      extra_body=_json_schema(action_schema(tools), getattr(model, "extra_body", None), "action"))


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
