"""A scripted chat model stands in for vLLM here: it replays given action texts and records what the
graph asked for (messages and request options), so graph logic is tested without a server. The real
model path is covered by tests/integration."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from strop.config import load_settings
from strop.tools.builtin import BUILTIN_TOOLS
from strop.tools.toolkit import final_answer

USAGE = {"input_tokens": 50, "output_tokens": 10, "total_tokens": 60}


class ScriptedModel(BaseChatModel):
    """Returns ``replies`` in order (an Exception instance is raised instead); records every call."""

    replies: list[Any]
    calls: list[dict[str, Any]] = []
    lock: Any = None

    def model_post_init(self, _context: Any) -> None:
        self.calls = []
        self.lock = threading.Lock()

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _next(self, messages: list[BaseMessage], kwargs: dict) -> str:
        with self.lock:
            self.calls.append({"messages": messages, **kwargs})
            reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self._next(messages, kwargs),
                                                                        usage_metadata=USAGE))])

    def _stream(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs):
        """The reply in pieces of 8 characters, as a server streams tokens."""
        reply = self._next(messages, kwargs)
        pieces = [reply[i:i + 8] for i in range(0, len(reply), 8)]
        for index, piece in enumerate(pieces):
            usage = USAGE if index == len(pieces) - 1 else None
            yield ChatGenerationChunk(message=AIMessageChunk(piece, usage_metadata=usage))


@pytest.fixture
def tools():
    return [*BUILTIN_TOOLS, final_answer]


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("STROP_AGENT__MAX_STEPS", "4")
    return load_settings()
