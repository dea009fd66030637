"""The chat model posts plain JSON on its own HTTP path: the server must see exactly what stock
``ChatOpenAI`` sends, and strop must read the same reply from it, streamed or not, sync or async."""

import asyncio
import json

import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from strop.agents.graph import Exemplars, _constrained, chat_model, load_exemplars, system_prompt
from strop.agents.model import OpenAICompatibleChat
from strop.config import SamplingSettings
from strop.serving.endpoint import Endpoint

ACTION = '{"tool":"calculator","args":{"expression":"914 - 186"}}'
USAGE = {"prompt_tokens": 900, "completion_tokens": 17, "total_tokens": 917}


def reply(request: httpx.Request) -> httpx.Response:
    if json.loads(request.content).get("stream"):
        chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
        chunks += [{"choices": [{"index": 0, "delta": {"content": ACTION[i:i + 5]}, "finish_reason": None}]}
                   for i in range(0, len(ACTION), 5)]
        chunks += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, {"choices": [], "usage": USAGE}]
        events = "".join(f"data: {json.dumps(c | {'id': 'r', 'object': 'chat.completion.chunk', 'model': 'm'})}\n\n"
                         for c in chunks)
        return httpx.Response(200, text=events + "data: [DONE]\n\n", headers={"content-type": "text/event-stream"})
    return httpx.Response(200, json={"id": "r", "object": "chat.completion", "created": 0, "model": "m", "usage": USAGE,
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": ACTION}}]})


class Server:
    """Records every request body; answers with ``reply`` or the status given."""

    def __init__(self, status: int = 200):
        self.bodies: list[dict] = []
        self.status = status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        return reply(request) if self.status == 200 else httpx.Response(self.status, json={"error": {"message": "no"}})

    def models(self, cls=OpenAICompatibleChat, max_retries: int = 0):
        options = dict(base_url="http://vllm.test/v1", api_key="EMPTY", model="m", temperature=0.0, max_tokens=64,
                       stream_usage=True, max_retries=max_retries,
                       http_client=httpx.Client(transport=httpx.MockTransport(self)),
                       http_async_client=httpx.AsyncClient(transport=httpx.MockTransport(self)))
        return cls(**options)


@pytest.fixture
def messages(tools):
    question = "What is 914 minus 186?"
    return [SystemMessage(system_prompt(tools)), *Exemplars(load_exemplars(tools)).for_question(question),
            HumanMessage(question)]


def calls(model, tools, messages):
    bound = _constrained(model, tools, 256)
    streamed = list(bound.stream(messages))
    return [bound.invoke(messages), asyncio.run(bound.ainvoke(messages)),
            sum(streamed[1:], streamed[0]), asyncio.run(_astream(bound, messages))]


async def _astream(bound, messages):
    chunks = [chunk async for chunk in bound.astream(messages)]
    return sum(chunks[1:], chunks[0])


def test_requests_and_replies_match_stock_chat_openai(tools, messages):
    ours, stock = Server(), Server()
    got = calls(ours.models(), tools, messages)
    expected = calls(stock.models(ChatOpenAI), tools, messages)
    assert ours.bodies == stock.bodies and len(ours.bodies) == 4
    first = ours.bodies[0]
    assert first["response_format"]["type"] == "json_schema" and first["max_completion_tokens"] == 256
    assert len(first["messages"]) == len(messages) and first["messages"][-1] == {"role": "user",
                                                                                "content": "What is 914 minus 186?"}
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.content == theirs.content == ACTION
        assert mine.usage_metadata == theirs.usage_metadata
        assert mine.response_metadata["model_name"] == theirs.response_metadata["model_name"] == "m"


def test_server_errors_are_openai_errors_after_the_retries(tools, messages):
    server = Server(status=500)
    bound = _constrained(server.models(max_retries=1), tools, 256)
    with pytest.raises(openai.InternalServerError):
        bound.invoke(messages)
    with pytest.raises(openai.InternalServerError):
        asyncio.run(bound.ainvoke(messages))
    assert len(server.bodies) == 4  # each call: the request and one retry


def serve_completions(server) -> None:
    """A real loopback server answering like ``reply``: keep-alive belongs to the HTTP client, which a mock
    transport bypasses."""
    def answer(body: dict):
        response = reply(httpx.Request("POST", "http://x", json=body))
        return 200, response.content, response.headers["content-type"]

    server.route("POST", "/v1/chat/completions", answer)


def loopback_model(server):
    return chat_model(Endpoint(server.url, "m", "EMPTY", managed=False), SamplingSettings(), max_retries=0)


def test_chat_model_keeps_one_connection_for_every_step(openai_server):
    serve_completions(openai_server)
    model = loopback_model(openai_server)

    async def three_steps():
        return [(await model.ainvoke("q")).content for _ in range(3)]

    assert [model.invoke("q").content for _ in range(3)] == [ACTION] * 3
    assert "".join(chunk.content for chunk in model.stream("q")) == ACTION
    assert asyncio.run(three_steps()) == [ACTION] * 3
    ports = openai_server.clients
    assert len(set(ports[:4])) == 1 and len(set(ports[4:])) == 1, ports


def test_a_connection_the_server_closed_is_replaced_without_sending_twice(openai_server):
    serve_completions(openai_server)
    openai_server.hang_up = True
    model = loopback_model(openai_server)  # no retries: only the stale connection may be retried
    assert [model.invoke("q").content for _ in range(3)] == [ACTION] * 3
    assert len(openai_server.clients) == len(set(openai_server.clients)) == 3
