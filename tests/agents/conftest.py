"""A scripted chat model stands in for vLLM here: it replays given action texts and records what the
graph asked for (messages and request options), so graph logic is tested without a server. The real
model path is covered by tests/integration."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from strop.config import load_settings
from strop.tools.builtin import BUILTIN_TOOLS
from strop.tools.toolkit import final_answer


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

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs) -> ChatResult:
        with self.lock:
            self.calls.append({"messages": messages, **kwargs})
            reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return ChatResult(generations=[ChatGeneration(message=AIMessage(
            reply, usage_metadata={"input_tokens": 50, "output_tokens": 10, "total_tokens": 60}))])


@pytest.fixture
def tools():
    return [*BUILTIN_TOOLS, final_answer]


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("STROP_AGENT__MAX_STEPS", "4")
    return load_settings()
