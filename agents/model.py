"""``ChatOpenAI`` that posts plain JSON over kept-alive connections.

An agent step is one chat request of some 25 messages (the few-shot exemplars come first). Through
``ChatOpenAI`` and the openai client, strop's own share of a step went mostly into walking the request
against the client's typed schema, building typed replies, re-converting the same exemplar messages on
every step and assembling each request through the client's option objects. Here LangChain still
builds the request body (so the server sees exactly what stock ``ChatOpenAI`` sends) and reads the
reply, but messages already converted are reused, and the JSON goes straight to the server, with the
openai client's retry policy and error types: blocking calls over ``http.client`` connections
(``keepalive.py``), async ones through one ``httpx.AsyncClient`` per event loop, or through the
``http_client`` / ``http_async_client`` a caller gives.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

import httpx
import openai
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from langchain_openai.chat_models.base import _convert_from_v1_to_chat_completions, _convert_message_to_dict
from pydantic import PrivateAttr

from strop.agents.keepalive import KeepAlive
from strop.agents.keepalive import fits as keepalive_fits

RETRIED_STATUSES = frozenset({408, 409, 429})  # and every 5xx, as the openai client retries
FIRST_RETRY_DELAY_S, MAX_RETRY_DELAY_S = 0.5, 8.0  # the openai client's backoff
DEFAULT_TIMEOUT_S = 600.0
CACHED_MESSAGES = 4096  # converted messages kept; the exemplars are the same objects on every step


class OpenAICompatibleChat(ChatOpenAI):
    """A LangChain chat model for vLLM or any OpenAI-compatible server, on a lean HTTP path."""

    _converted: dict[int, tuple[BaseMessage, dict]] = PrivateAttr(default_factory=dict)
    _sync_http: httpx.Client | KeepAlive | None = PrivateAttr(default=None)
    _async_http: weakref.WeakKeyDictionary = PrivateAttr(default_factory=weakref.WeakKeyDictionary)
    _http_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # -- LangChain's four entry points -------------------------------------------------------
    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager=None,
                  **kwargs: Any) -> ChatResult:
        return self._create_chat_result(self._post(self._body(messages, stop, kwargs)))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager=None,
                         **kwargs: Any) -> ChatResult:
        return self._create_chat_result(await self._apost(self._body(messages, stop, kwargs)))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager=None, *,
                stream_usage: bool | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        body = self._body(messages, stop, self._streaming(kwargs, stream_usage))
        chunk_class: type = AIMessageChunk
        for data in self._post_streaming(body):
            chunk = self._convert_chunk_to_generation_chunk(data, chunk_class, {})
            if chunk is not None:
                chunk_class = chunk.message.__class__
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager=None, *,
                       stream_usage: bool | None = None, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        body = self._body(messages, stop, self._streaming(kwargs, stream_usage))
        chunk_class: type = AIMessageChunk
        async for data in self._apost_streaming(body):
            chunk = self._convert_chunk_to_generation_chunk(data, chunk_class, {})
            if chunk is not None:
                chunk_class = chunk.message.__class__
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    # -- the request body --------------------------------------------------------------------
    def _streaming(self, kwargs: dict[str, Any], stream_usage: bool | None) -> dict[str, Any]:
        kwargs = kwargs | {"stream": True}
        if self._should_stream_usage(stream_usage, **kwargs):
            kwargs["stream_options"] = {"include_usage": True}
        return kwargs

    def _body(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """What stock ``ChatOpenAI`` would send: its payload, ``extra_body`` merged in as the openai client does."""
        payload = self._get_request_payload([], stop=stop, **kwargs)
        cache = self._converted  # a private attribute costs a pydantic lookup on every access
        payload["messages"] = [_message_dict(cache, m) for m in messages]
        extra = payload.pop("extra_body", None) or {}
        return {**payload, **extra}

    # -- HTTP --------------------------------------------------------------------------------
    @property
    def _url(self) -> str:
        return f"{(self.openai_api_base or 'https://api.openai.com/v1').rstrip('/')}/chat/completions"

    def _headers(self) -> dict[str, str]:
        key = self.openai_api_key.get_secret_value() if self.openai_api_key else ""
        return {**(self.default_headers or {}), "Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def _timeout(self) -> Any:
        return DEFAULT_TIMEOUT_S if self.request_timeout is None else self.request_timeout

    def _retries(self) -> int:
        return 2 if self.max_retries is None else self.max_retries

    def _sync_sender(self, body: dict[str, Any]) -> tuple[Callable[[httpx.Request], httpx.Response], httpx.Request]:
        """How to send ``body`` without an event loop, and the request to send."""
        if self.http_client is not None:
            client = self.http_client
            return partial(client.send, stream=True), self._request(client, body)
        transport = self._sync_http
        if transport is None:
            with self._http_lock:
                if self._sync_http is None:
                    plain = keepalive_fits(self._url)
                    self._sync_http = KeepAlive() if plain else httpx.Client(timeout=self._timeout())
                transport = self._sync_http
        if isinstance(transport, httpx.Client):
            return partial(transport.send, stream=True), self._request(transport, body)
        request = httpx.Request("POST", self._url, content=json.dumps(body).encode(), headers=self._headers(),
                                extensions={"timeout": httpx.Timeout(self._timeout()).as_dict()})
        return transport.handle_request, request

    def _async_client(self) -> httpx.AsyncClient:
        if self.http_async_client is not None:
            return self.http_async_client
        # One per event loop: pooled connections belong to the loop that opened them.
        loop = asyncio.get_running_loop()
        client = self._async_http.get(loop)
        if client is None:
            client = self._async_http[loop] = httpx.AsyncClient(timeout=self._timeout())
        return client

    def _request(self, client: httpx.Client | httpx.AsyncClient, body: dict[str, Any]) -> httpx.Request:
        return client.build_request("POST", self._url, content=json.dumps(body).encode(), headers=self._headers(),
                                    timeout=self._timeout())

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._send(body) as response:
            return json.loads(response.read())

    async def _apost(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self._asend(body) as response:
            return json.loads(await response.aread())

    def _post_streaming(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        with self._send(body) as response:
            for line in response.iter_lines():
                if (data := _event_data(line, response)) is not None:
                    yield data

    async def _apost_streaming(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async with self._asend(body) as response:
            async for line in response.aiter_lines():
                if (data := _event_data(line, response)) is not None:
                    yield data

    def _send(self, body: dict[str, Any]) -> _Exchange:
        send, request = self._sync_sender(body)
        return _Exchange(send, request, self._retries())

    def _asend(self, body: dict[str, Any]) -> _AsyncExchange:
        client = self._async_client()
        return _AsyncExchange(partial(client.send, stream=True), self._request(client, body), self._retries())


def _message_dict(cache: dict[int, tuple[BaseMessage, dict]], message: BaseMessage) -> dict[str, Any]:
    """``message`` as stock ``ChatOpenAI`` sends it, converted once."""
    # Keyed by identity and holding the message, so an id is never reused while cached. Messages
    # are not changed once made (LangGraph and strop build new ones), so a cached form stays right.
    cached = cache.get(id(message))
    if cached is not None and cached[0] is message:
        return cached[1]
    if isinstance(message, AIMessage):
        converted = _convert_message_to_dict(_convert_from_v1_to_chat_completions(message))
    else:
        converted = _convert_message_to_dict(message)
    if len(cache) >= CACHED_MESSAGES:
        cache.clear()
    cache[id(message)] = (message, converted)
    return converted


class _Exchange:
    """One request with the openai client's retries: connection failures, timeouts, 408/409/429 and 5xx
    are retried with exponential backoff; what still fails is raised as the openai error for it."""

    def __init__(self, send: Callable[[httpx.Request], Any], request: httpx.Request, retries: int):
        self.send, self.request, self.retries = send, request, retries
        self.response: httpx.Response | None = None

    def __enter__(self) -> httpx.Response:
        for attempt in range(self.retries + 1):
            if (response := self._settle(attempt, self._attempt())) is not None:
                return response
            time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    def __exit__(self, *exc: Any) -> None:
        if self.response is not None:
            self.response.close()

    def _attempt(self) -> httpx.Response | httpx.TransportError:
        try:
            response = self.send(self.request)
        except httpx.TransportError as exc:
            return exc
        if not response.is_success:
            response.read()  # the error message is in the body
            response.close()
        return response

    def _settle(self, attempt: int, outcome: httpx.Response | httpx.TransportError) -> httpx.Response | None:
        """The response to read, or None to try again; raises the openai error once nothing is left to retry."""
        last = attempt == self.retries
        if isinstance(outcome, httpx.TransportError):
            if last:
                raise _connection_error(outcome, self.request) from outcome
            return None
        if outcome.is_success:
            self.response = outcome
            return outcome
        if last or not _retried(outcome):
            raise _status_error(outcome)
        return None


class _AsyncExchange(_Exchange):
    async def __aenter__(self) -> httpx.Response:
        for attempt in range(self.retries + 1):
            if (response := self._settle(attempt, await self._aattempt())) is not None:
                return response
            await asyncio.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    async def __aexit__(self, *exc: Any) -> None:
        if self.response is not None:
            await self.response.aclose()

    async def _aattempt(self) -> httpx.Response | httpx.TransportError:
        try:
            response = await self.send(self.request)
        except httpx.TransportError as exc:
            return exc
        if not response.is_success:
            await response.aread()
            await response.aclose()
        return response


def _retried(response: httpx.Response) -> bool:
    return response.status_code in RETRIED_STATUSES or response.status_code >= 500


def _backoff(attempt: int) -> float:
    return min(FIRST_RETRY_DELAY_S * 2.0 ** attempt, MAX_RETRY_DELAY_S) * (1 - 0.25 * random.random())


STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
    404: openai.NotFoundError, 409: openai.ConflictError, 422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def _status_error(response: httpx.Response) -> openai.APIStatusError:
    try:
        body = response.json()
    except ValueError:
        body = response.text or None
    detail = body.get("error", body) if isinstance(body, dict) else body
    message = detail.get("message", detail) if isinstance(detail, dict) else detail
    kind = STATUS_ERRORS.get(response.status_code)
    if kind is None:
        kind = openai.InternalServerError if response.status_code >= 500 else openai.APIStatusError
    return kind(f"Error code: {response.status_code} - {message}", response=response, body=body)


def _connection_error(exc: httpx.TransportError, request: httpx.Request) -> openai.APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return openai.APITimeoutError(request=request)
    return openai.APIConnectionError(request=request)


def _event_data(line: str, response: httpx.Response) -> dict[str, Any] | None:
    """The JSON of one server-sent event line (None for blank lines, comments and the end marker)."""
    if not line.startswith("data:"):
        return None
    text = line[5:].strip()
    if text == "[DONE]":
        return None
    data = json.loads(text)
    if isinstance(data, dict) and data.get("error"):  # the server failed mid-stream
        error = data["error"]
        message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
        raise openai.APIError(message, response.request, body=error)
    return data
