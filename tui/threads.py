"""The chat's list of threads: names and order, beside LangGraph's checkpoints in the same SQLite file.

The checkpointer keeps each thread's conversation; this table only adds what a person needs to find
it again (a name, when it was last used). Deleting a thread removes both.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """CREATE TABLE IF NOT EXISTS chat_threads (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at REAL NOT NULL, used_at REAL NOT NULL)"""


@dataclass(frozen=True)
class ChatThread:
    id: str
    name: str
    used_at: float


def new_thread_id() -> str:
    return uuid.uuid4().hex[:8]


class ThreadBook:
    """Thread names and recency; every change is its own committed transaction."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=10.0)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute(_SCHEMA)

    def list(self) -> list[ChatThread]:
        """Threads, most recently used first."""
        with self._lock:
            rows = self._db.execute("SELECT id, name, used_at FROM chat_threads ORDER BY used_at DESC").fetchall()
        return [ChatThread(*row) for row in rows]

    def get(self, thread_id: str) -> ChatThread | None:
        with self._lock:
            row = self._db.execute("SELECT id, name, used_at FROM chat_threads WHERE id = ?", (thread_id,)).fetchone()
        return ChatThread(*row) if row else None

    def ensure(self, thread_id: str, name: str) -> ChatThread:
        """The thread, added under ``name`` if it is not listed yet; either way marked as just used."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute("INSERT INTO chat_threads VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET used_at = ?",
                             (thread_id, name, now, now, now))
        return self.get(thread_id)

    def rename(self, thread_id: str, name: str) -> None:
        with self._lock, self._db:
            self._db.execute("UPDATE chat_threads SET name = ? WHERE id = ?", (name, thread_id))

    def remove(self, thread_id: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM chat_threads WHERE id = ?", (thread_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def thread_name(question: str, limit: int = 40) -> str:
    """A thread's default name: its first question, shortened at a word boundary."""
    text = " ".join(question.split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + "…"
