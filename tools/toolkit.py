"""The agent's standard tool set: think, calculator, search_memory, remember and final_answer.

The memory tools are closures over one lazily opened :class:`~strop.memory.core.Memory`, so an agent
that never searches never loads the embedder or opens (and locks) the memory folder.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from dataclasses import replace
from typing import Annotated

from pydantic import Field

from strop.config import Settings
from strop.tools.base import Tool, tool
from strop.tools.builtin import BUILTIN_TOOLS

MAX_ANSWER = 300  # characters: an answer must fit in one action's token budget
MAX_QUERY = 200  # characters: a search query is a few words; longer is a loop or a copied passage
MAX_FACT = 500  # characters: a remembered fact is a sentence or two
PASSAGE_CHARS = 800  # of each passage shown to the model: most passages whole (SQuAD's median is about 700)


PASSAGE_ID = r"^[0-9a-f]{8}$"  # the short ids search_memory shows


@tool
def final_answer(answer: Annotated[str, Field(min_length=1, max_length=MAX_ANSWER)],
                 sources: Annotated[list[Annotated[str, Field(pattern=PASSAGE_ID)]], Field(max_length=3)] = ()
                 ) -> str:
    """Give the final answer to the user and stop. The answer alone, without explanation.

    Args:
        answer: the answer, e.g. a number, a name or one sentence.
        sources: ids of the memory passages the answer comes from, if any.
    """
    cited = f" [{', '.join(sources)}]" if sources else ""
    return answer.strip() + cited


class LazyMemory:
    """Opens the memory on first use; shared by the tools of one agent across threads.

    Every LazyMemory of one collection in a process uses the same open memory and lock: the embedded
    engine locks its folder, so the agent's exemplar retrieval and its tools could not open it twice.
    Once no LazyMemory uses it any more, it goes away (and its folder lock with it), as one alone would.
    """

    _opened: weakref.WeakValueDictionary[tuple, _Opened] = weakref.WeakValueDictionary()
    _opening = threading.Lock()

    def __init__(self, settings: Settings):
        self.settings = settings
        mem = settings.memory
        where = mem.url if mem.backend == "server" else str(settings.memory_dir.resolve())
        key = (mem.backend, where, mem.collection)
        with self._opening:
            self._shared = self._opened.get(key) or _Opened()
            self._opened[key] = self._shared

    def __enter__(self):
        self._shared.lock.acquire()
        try:
            if self._shared.memory is None:
                self._shared.memory = _open_memory(self.settings)
        except BaseException:
            self._shared.lock.release()
            raise
        return self._shared.memory

    def __exit__(self, *exc) -> None:
        self._shared.lock.release()

    @property
    def is_open(self) -> bool:
        return self._shared.memory is not None

    def close(self) -> None:
        """Close the memory (for every user of it in this process; the next use opens it again)."""
        with self._shared.lock:
            if self._shared.memory is not None:
                self._shared.memory.close()
                self._shared.memory = None


def _open_memory(settings: Settings):
    from transformers.utils import logging

    from strop.memory.core import Memory

    logging.disable_progress_bar()  # keep the agent's event stream readable
    return Memory(settings)


class _Opened:
    def __init__(self) -> None:
        self.memory = None
        self.lock = threading.Lock()


def passage_line(chunk_id: str, score: float, text: str) -> str:
    """One passage as ``search_memory`` shows it: ``[id8] (score) text`` on one line, whatever the note's lines."""
    return f"[{chunk_id[:8]}] ({score:.2f}) {' '.join(text.split())[:PASSAGE_CHARS]}"


def memory_tools(memory: LazyMemory, namespace: str, k: int, remember_into: str | None = None) -> list[Tool]:
    """``search_memory`` and ``remember`` over ``memory``, confined to ``namespace``; ``remember_into`` sends
    remembered facts to another namespace (evaluations keep them out of the suite's and the user's)."""
    from strop.memory.core import IngestReport
    from strop.memory.ingest import Document, chunk_document
    from strop.memory.schema import SearchFilter

    @tool
    def search_memory(query: Annotated[str, Field(min_length=2, max_length=MAX_QUERY)]) -> str:
        """Search the memory for passages about a topic; returns passage ids, scores and text.

        Args:
            query: a few words describing what to look for.
        """
        with memory as mem:
            hits = mem.search(query, k=k, where=SearchFilter(namespace=namespace))
        if not hits:
            return "No passages found."
        return "\n".join(passage_line(h.id, h.score, h.payload.get("text", "")) for h in hits)

    def relevance(question: str) -> float:
        """The cosine similarity of the passage closest to ``question`` (0 for an empty memory)."""
        if not question.strip():
            return 0.0
        with memory as mem:
            hits = mem.search(question, k=1, mode="dense", where=SearchFilter(namespace=namespace))
        return hits[0].score if hits else 0.0

    @tool
    def remember(fact: Annotated[str, Field(min_length=3, max_length=MAX_FACT)]) -> str:
        """Store a fact in memory so that later searches find it.

        Args:
            fact: one self-contained sentence.
        """
        doc_id = "fact-" + hashlib.sha256(fact.encode()).hexdigest()[:16]
        document = Document(fact, source="remember", title="remembered fact", doc_id=doc_id)
        report = IngestReport()
        with memory as mem:
            mem.store_chunks(chunk_document(document, remember_into or namespace, mem.chunker()), report)
        return "Remembered." if report.added else "Already known."

    return [replace(search_memory, relevance=relevance), remember]


def standard_tools(settings: Settings, memory: LazyMemory | None = None, remember_into: str | None = None
                   ) -> list[Tool]:
    """Every tool an agent gets by default, ``final_answer`` last."""
    memory = memory or LazyMemory(settings)
    return [*BUILTIN_TOOLS, *memory_tools(memory, settings.agent.namespace, settings.agent.memory_k, remember_into),
            final_answer]
