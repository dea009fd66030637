"""``ChatOpenAI`` that sends and receives plain JSON.

The openai client's ``chat.completions.create`` walks every request field against its typed schema
(``maybe_transform``) before sending, and builds a typed object from every reply and streamed chunk.
With the few-shot exemplars an action request carries some 25 messages, and the request walk alone was
about 80% of strop's own time per agent step; building a typed object for each streamed token was most
of the rest. LangChain hands the client plain JSON (dicts of strings, which the walk returns unchanged)
and reads replies as dicts as well (it dumps typed ones back to dicts), so both are skipped here. The
rest of the client (HTTP, retries with backoff, timeouts, errors, SSE) is the openai client's.
"""

from __future__ import annotations

from typing import Any, Self

from langchain_openai import ChatOpenAI
from openai import AsyncStream, Stream
from openai.resources.chat.completions import AsyncCompletions, Completions
from pydantic import model_validator


class OpenAICompatibleChat(ChatOpenAI):
    """A LangChain chat model for vLLM or any OpenAI-compatible server, without the typed-object round trips."""

    @model_validator(mode="after")
    def _send_plain_requests(self) -> Self:
        # Runs after ChatOpenAI built its clients; the openai clients stay, only `create` changes.
        if self.root_client is not None:
            self.client = _PlainCompletions(self.root_client)
        if self.root_async_client is not None:
            self.async_client = _AsyncPlainCompletions(self.root_async_client)
        return self


def _options(extra_headers: Any, extra_query: Any, extra_body: Any, timeout: Any) -> dict[str, Any]:
    given = {"headers": extra_headers, "params": extra_query, "extra_json": extra_body, "timeout": timeout}
    return {k: v for k, v in given.items() if v is not None}


class _PlainCompletions(Completions):
    def create(self, *, extra_headers=None, extra_query=None, extra_body=None, timeout=None, **body: Any):
        # cast_to=object: the reply (or each streamed chunk) comes back as the server's JSON.
        return self._post("/chat/completions", body=body, cast_to=object,
                          options=_options(extra_headers, extra_query, extra_body, timeout),
                          stream=bool(body.get("stream")), stream_cls=Stream[object])


class _AsyncPlainCompletions(AsyncCompletions):
    async def create(self, *, extra_headers=None, extra_query=None, extra_body=None, timeout=None, **body: Any):
        return await self._post("/chat/completions", body=body, cast_to=object,
                                options=_options(extra_headers, extra_query, extra_body, timeout),
                                stream=bool(body.get("stream")), stream_cls=AsyncStream[object])
