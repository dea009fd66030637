"""Exemplars learned from past runs, shown to an agent by question ([agent] learned_exemplars).

``strop.training.exemplars.learn`` stores successful runs as episodes in their own memory namespace;
``LearnedExemplars`` retrieves the episodes nearest a question when a run starts.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from strop.agents.graph import learned_messages
from strop.config import Settings
from strop.tools.base import Tool
from strop.tools.toolkit import LazyMemory

SOURCE = "trajectory"  # the memory payload's source of a learned exemplar
CACHED_QUESTIONS = 256


class LearnedExemplars:
    """The stored episodes nearest a question, using only the agent's tools; retrieved once per question."""

    def __init__(self, memory: LazyMemory, namespace: str, count: int, tools: Sequence[Tool]):
        self.memory, self.namespace, self.count = memory, namespace, count
        self.tools = {t.name for t in tools}
        self._by_question: dict[str, tuple[list[dict[str, Any]], list[BaseMessage]]] = {}
        self._lock = threading.Lock()

    def episodes(self, question: str) -> list[dict[str, Any]]:
        """Up to ``count`` episodes, the nearest last."""
        return self._retrieved(question)[0]

    def messages(self, question: str) -> list[BaseMessage]:
        """The episodes as messages; the same objects on every step of a run."""
        return self._retrieved(question)[1]

    def _retrieved(self, question: str) -> tuple[list[dict[str, Any]], list[BaseMessage]]:
        with self._lock:
            found = self._by_question.get(question)
        if found is None:
            episodes = self._retrieve(question)
            found = episodes, learned_messages(episodes)
            with self._lock:
                if len(self._by_question) >= CACHED_QUESTIONS:
                    self._by_question.clear()
                self._by_question[question] = found
        return found

    def _retrieve(self, question: str) -> list[dict[str, Any]]:
        from strop.memory.schema import SearchFilter

        if not question.strip():
            return []
        # A few more than shown: some may be left out below.
        with self.memory as mem:
            hits = mem.search(question, k=self.count + 4, mode="dense", where=SearchFilter(namespace=self.namespace))
        episodes = [json.loads(hit.payload["episode"]) for hit in hits if "episode" in hit.payload]
        # Never the exemplar of this very question: were it an evaluation case, the exemplar would hand the
        # model the answer being graded. Exemplars needing tools this agent lacks are left out too.
        usable = [e for e in episodes if not same_question(e["question"], question) and self._usable(e)]
        return list(reversed(usable[:self.count]))

    def _usable(self, episode: dict[str, Any]) -> bool:
        return {step["action"].get("tool") for step in episode["steps"]} <= self.tools


def same_question(a: str, b: str) -> bool:
    """Equal but for case, spacing and final punctuation."""
    return _normal(a) == _normal(b)


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip("?.! ").casefold()


def open_learned(settings: Settings, tools: Sequence[Tool], memory: LazyMemory | None = None
                 ) -> LearnedExemplars | None:
    """The learned exemplars an agent shows under ``settings`` (None when [agent] learned_exemplars is 0)."""
    if settings.agent.learned_exemplars == 0:
        return None
    return LearnedExemplars(memory or LazyMemory(settings), settings.agent.exemplar_namespace,
                            settings.agent.learned_exemplars, tools)
