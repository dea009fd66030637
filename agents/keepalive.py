"""Keep-alive HTTP/1.1 over ``http.client``, as an ``httpx`` transport, for an agent's blocking model calls.

Each agent step is one request. Sent through ``httpx.Client`` it cost about 1.3 ms of CPU on a busy
core, against 0.4 ms through ``http.client`` on a kept-alive connection (the client's request and
response machinery, not the socket, made the difference). Plain-http servers without a proxy (vLLM on
loopback or a LAN) get this transport; everything else keeps ``httpx``. Responses are ``httpx``
responses, failures ``httpx`` errors, so callers do not see which one answered.
"""

from __future__ import annotations

import http.client
import threading
import urllib.request
from collections.abc import Iterator

import httpx

IDLE_PER_SERVER = 32  # kept-alive connections; more would only sit idle
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def fits(url: str) -> bool:
    """Whether ``url`` can go through :class:`KeepAlive`: plain http, and no proxy for its host."""
    parsed = httpx.URL(url)
    if parsed.scheme != "http":
        return False
    proxies = urllib.request.getproxies()
    return "http" not in proxies or bool(urllib.request.proxy_bypass(parsed.host))


class KeepAlive(httpx.BaseTransport):
    """HTTP/1.1 connections kept open per server and reused, one request at a time each; thread-safe."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        server = (request.url.host, request.url.port or 80)
        timeout = request.extensions.get("timeout", {}).get("read")
        connection, reused = self._checkout(server, timeout)
        try:
            response = _exchange(connection, request)
        except STALE:
            connection.close()
            if not reused:
                raise httpx.RemoteProtocolError("the server closed the connection", request=request) from None
            # A kept-alive connection the server had already closed (idle timeout): once more on a new one.
            connection, _ = self._checkout(server, timeout, fresh=True)
            response = _exchange(connection, request)
        return httpx.Response(response.status, headers=response.getheaders(), request=request,
                              stream=_Body(response, lambda: self._release(server, connection, response)))

    def close(self) -> None:
        with self._lock:
            for connections in self._idle.values():
                for connection in connections:
                    connection.close()
            self._idle.clear()

    def _checkout(self, server: tuple[str, int], timeout: float | None,
                  fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(server)
            if idle and not fresh:
                return idle.pop(), True
        return http.client.HTTPConnection(*server, timeout=timeout), False

    def _release(self, server: tuple[str, int], connection: http.client.HTTPConnection,
                 response: http.client.HTTPResponse) -> None:
        if not response.isclosed() or response.will_close:  # not read to its end, or the server ends it
            connection.close()
            return
        with self._lock:
            idle = self._idle.setdefault(server, [])
            if len(idle) < IDLE_PER_SERVER:
                idle.append(connection)
                return
        connection.close()


def _exchange(connection: http.client.HTTPConnection, request: httpx.Request) -> http.client.HTTPResponse:
    """Send ``request`` and read the response's head, with socket failures as ``httpx`` errors."""
    try:
        connection.request(request.method, request.url.raw_path.decode("ascii"), body=request.read(),
                           headers=dict(request.headers))
        return connection.getresponse()
    except STALE:
        raise
    except TimeoutError as exc:
        connection.close()
        raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        raise httpx.ConnectError(str(exc), request=request) from exc


class _Body(httpx.SyncByteStream):
    """The response body as it arrives (``read1``: a streamed event is passed on without waiting for more)."""

    def __init__(self, response: http.client.HTTPResponse, release) -> None:
        self.response, self.release = response, release

    def __iter__(self) -> Iterator[bytes]:
        try:
            while chunk := self.response.read1(1 << 16):
                yield chunk
            self.response.read()  # marks the response finished, so the connection can serve the next one
        except (OSError, http.client.HTTPException) as exc:
            raise httpx.ReadError(str(exc)) from exc

    def close(self) -> None:
        self.release()

