"""The agent graph: a LangGraph ``StateGraph`` whose model is served over the OpenAI API.

It starts as one ``respond`` node; tools, memory and trajectories are further nodes and edges on
the same graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph

from strop.config import SamplingSettings
from strop.errors import StropError
from strop.serving.endpoint import Endpoint

PROMPTS_DIR = Path(__file__).parent / "prompts"


def load_prompt(name: str) -> str:
    """Read ``prompts/<name>.md``."""
    return (PROMPTS_DIR / f"{name}.md").read_text().strip()


def chat_model(endpoint: Endpoint, sampling: SamplingSettings, timeout_s: float = 120.0) -> ChatOpenAI:
    """A LangChain chat model talking to ``endpoint`` (vLLM or any OpenAI-compatible server)."""
    return ChatOpenAI(
        base_url=endpoint.base_url,
        api_key=endpoint.api_key,
        model=endpoint.model,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        timeout=timeout_s,
        max_retries=2,
    )


def build_agent(model: BaseChatModel, system_prompt: str | None = None) -> CompiledStateGraph:
    """Compile the agent graph around ``model``."""
    system = SystemMessage(system_prompt if system_prompt is not None else load_prompt("system"))

    def respond(state: MessagesState) -> dict:
        return {"messages": [model.invoke([system, *state["messages"]])]}

    graph = StateGraph(MessagesState)
    graph.add_node("respond", respond)
    graph.add_edge(START, "respond")
    graph.add_edge("respond", END)
    return graph.compile()


def stream_answer(agent: CompiledStateGraph, question: str) -> Iterator[str]:
    """Yield the answer's text as the model generates it."""
    try:
        for chunk, _meta in agent.stream({"messages": [HumanMessage(question)]}, stream_mode="messages"):
            if isinstance(chunk, AIMessageChunk) and isinstance(chunk.content, str) and chunk.content:
                yield chunk.content
    except openai.APIConnectionError as exc:
        raise StropError(f"Lost the connection to the model server: {exc}.",
                         fix="Check `strop serve status` (or the server at STROP_LLM_URL).") from exc
    except openai.APIStatusError as exc:
        raise StropError(f"The model server refused the request ({exc.status_code}): {exc.message}",
                         fix="Check the model name and the server log (`strop serve logs`).") from exc


def ask(agent: CompiledStateGraph, question: str) -> str:
    """The whole answer to one question."""
    return "".join(stream_answer(agent, question))
