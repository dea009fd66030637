"""Shared fixtures. Every test gets a clean STROP_* environment and its own state folder."""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path_factory):
    """Tests never read the developer's strop.toml or STROP_* variables."""
    for key in list(os.environ):
        if key.startswith("STROP_"):
            monkeypatch.delenv(key)
    config = tmp_path_factory.mktemp("config") / "strop.toml"
    config.touch()
    monkeypatch.setenv("STROP_CONFIG", str(config))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StandInServer:
    """A real HTTP/1.1 server on loopback standing in for an OpenAI-compatible server (vLLM) in unit tests.

    ``routes`` maps ``(method, path)`` to a function of the request's JSON body (None for GET) that returns
    the reply: a JSON-able object (status 200), ``(status, object)``, or ``(status, bytes, content type)``.
    Other paths get 404. Every request is kept in ``requests`` as ``(method, path, body)`` and the client's
    port in ``clients``; ``hang_up`` closes each connection after one reply without saying so, as a
    server's idle timeout does.
    """

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Any] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.clients: list[int] = []
        self.hang_up = False
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.root = f"http://127.0.0.1:{self._httpd.server_port}"
        self.url = f"{self.root}/v1"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def route(self, method: str, path: str, answer) -> None:
        self.routes[(method, path)] = answer

    def bodies(self, path: str) -> list[Any]:
        return [body for _, at, body in self.requests if at == path]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler_for(server: StandInServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._answer(None)

        def do_POST(self) -> None:
            self._answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        def _answer(self, body: Any) -> None:
            server.requests.append((self.command, self.path, body))
            server.clients.append(self.client_address[1])
            answer = server.routes.get((self.command, self.path))
            reply = answer(body) if answer else (404, {"error": {"message": f"no route {self.path}"}})
            status, payload, kind = _reply_parts(reply)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.close_connection = server.hang_up

        def log_message(self, *args) -> None:
            pass

    return Handler


def _reply_parts(reply: Any) -> tuple[int, bytes, str]:
    if isinstance(reply, tuple) and len(reply) == 3:
        return reply
    status, payload = reply if isinstance(reply, tuple) else (200, reply)
    return status, json.dumps(payload).encode(), "application/json"


@pytest.fixture
def openai_server():
    """A :class:`StandInServer` with no routes yet, closed after the test."""
    server = StandInServer()
    yield server
    server.close()
