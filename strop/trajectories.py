"""The trajectory store: one append-only record per agent run, in SQLite (WAL).

Every run of an agent (chat, ``strop ask``, a scenario case, a rollout) becomes one row whose
``record`` column holds the whole run as JSON; a few columns are copied out for filtering. Rows
are inserted each in its own fsynced transaction (only retention deletes old ones), so a crash loses
at most the run in flight and readers (other processes included) see every finished run while runs
are being added.
The schema is versioned with ``PRAGMA user_version`` and explicit migrations.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from strop.errors import StropError

SCHEMA_VERSION = 1

MIGRATIONS = [
    """
    CREATE TABLE trajectories (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        thread_id TEXT,
        prompt TEXT NOT NULL,
        answer TEXT,
        status TEXT NOT NULL,
        model TEXT,
        adapter TEXT,
        scenario TEXT,
        case_id TEXT,
        steps INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        duration_s REAL NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX trajectories_created ON trajectories (created_at);
    CREATE INDEX trajectories_thread ON trajectories (thread_id, created_at);
    CREATE INDEX trajectories_scenario ON trajectories (scenario, case_id);
    """,
]

STATUSES = ("answered", "budget_exhausted", "error")


@dataclass
class StepTiming:
    """One model call or tool call of a run."""

    kind: str  # "model" or "tool"
    name: str  # model name or tool name
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Trajectory:
    """Everything the self-improvement loop may learn from one agent run."""

    prompt: str
    messages: list[dict[str, Any]]  # every message of the run, tool calls and tool results included
    status: str  # one of STATUSES
    answer: str | None = None
    model: str = ""
    adapter: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    steps: list[StepTiming] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # A final answer strop wrote from a plain model call (a memory answer): that call's messages ("prompt") and
    # the model's own reply ("reply"), which is the decision training learns for that step.
    answered_from: dict[str, Any] | None = None
    thread_id: str | None = None
    scenario: str | None = None
    case_id: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)
    duration_s: float = 0.0
    schema_version: int = SCHEMA_VERSION

    @property
    def model_calls(self) -> int:
        """Actions the model took (each step also logs the tool it ran)."""
        return sum(s.kind == "model" for s in self.steps)

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.steps)

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        data = {k: v for k, v in data.items() if k not in ("prompt_tokens", "completion_tokens")}
        data["steps"] = [StepTiming(**s) for s in data.get("steps", [])]
        return cls(**data)


def _record_json(t: Trajectory) -> str:
    """``json.dumps(t.to_dict())`` without ``asdict``'s deep copy of every message (the same text)."""
    record = {**vars(t), "steps": [vars(s) for s in t.steps], "prompt_tokens": t.prompt_tokens,
              "completion_tokens": t.completion_tokens}
    return json.dumps(record, ensure_ascii=False)


class TrajectoryStore:
    """Append-only SQLite store of trajectories, safe to share between threads and processes."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a run reported as saved survives a power cut
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StropError(f"Trajectory store {path} cannot be opened: {exc}.",
                             fix="Move the file aside; strop starts a new store (the old one stays readable "
                             "with sqlite3 if only its end was damaged).") from exc

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StropError(f"Trajectory store {self.path} has schema {version}, newer than this strop "
                             f"understands ({len(MIGRATIONS)}).", fix="Upgrade strop.")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    def close(self) -> None:
        self._db.close()

    def append(self, t: Trajectory) -> None:
        """Add one finished run (durably, before returning)."""
        if t.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {t.status!r}")
        row = (t.id, t.created_at, t.thread_id, t.prompt, t.answer, t.status, t.model, t.adapter, t.scenario,
               t.case_id, len(t.steps), t.prompt_tokens, t.completion_tokens, t.duration_s,
               _record_json(t))
        with self._lock:
            self._db.execute(f"INSERT INTO trajectories VALUES ({', '.join('?' * len(row))})", row)

    def get(self, trajectory_id: str) -> Trajectory:
        """One run by id, or by a unique id prefix (as `strop trajectories show` accepts)."""
        with self._lock:
            rows = self._db.execute("SELECT record FROM trajectories WHERE id LIKE ? LIMIT 2",
                                    (trajectory_id.replace("%", "") + "%",)).fetchall()
        if len(rows) != 1:
            problem = "matches no trajectory" if not rows else "matches several trajectories"
            raise StropError(f"Id {trajectory_id!r} {problem} in {self.path}.",
                             fix="Copy an id from `strop trajectories list`.")
        return Trajectory.from_dict(json.loads(rows[0][0]))

    def query(self, *, limit: int | None = None, thread_id: str | None = None, scenario: str | None = None,
              status: str | None = None, since: float | None = None, newest_first: bool = True
              ) -> Iterator[Trajectory]:
        """Runs matching every filter given."""
        clauses, params = [], []
        for column, value in (("thread_id", thread_id), ("scenario", scenario), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("created_at >= ?")
            params.append(since)
        sql = "SELECT record FROM trajectories"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += f" ORDER BY created_at {'DESC' if newest_first else 'ASC'}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        for (record,) in rows:
            yield Trajectory.from_dict(json.loads(record))

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM trajectories").fetchone()[0]

    # -- runs by people (chat, ask: no scenario) ---------------------------------------------
    def chat_count(self, since: float) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM trajectories WHERE scenario IS NULL AND created_at >= ?",
                                    (since,)).fetchone()[0]

    def last_chat_at(self) -> float | None:
        with self._lock:
            return self._db.execute("SELECT MAX(created_at) FROM trajectories WHERE scenario IS NULL").fetchone()[0]

    def chat_runs(self, adapter: str | None, *, since: float = 0.0, before: float = float("inf"), limit: int,
                  newest_first: bool) -> list[Trajectory]:
        """People's runs answered with ``adapter`` (None: the base model) in [since, before)."""
        sql = (f"SELECT record FROM trajectories WHERE scenario IS NULL AND adapter IS ? AND created_at >= ? "
               f"AND created_at < ? ORDER BY created_at {'DESC' if newest_first else 'ASC'} LIMIT ?")
        with self._lock:
            rows = self._db.execute(sql, (adapter, since, before, limit)).fetchall()
        return [Trajectory.from_dict(json.loads(record)) for (record,) in rows]

    # -- retention ---------------------------------------------------------------------------
    def ages(self) -> list[tuple[str, float]]:
        """Every (id, created_at), oldest first."""
        with self._lock:
            return self._db.execute("SELECT id, created_at FROM trajectories ORDER BY created_at").fetchall()

    def delete(self, ids: list[str]) -> int:
        """Remove runs for good (retention); returns how many went."""
        with self._lock:
            self._db.execute("BEGIN")
            removed = sum(self._db.execute("DELETE FROM trajectories WHERE id = ?", (i,)).rowcount for i in ids)
            self._db.execute("COMMIT")
            with contextlib.suppress(sqlite3.OperationalError):  # readers elsewhere: the space is reused instead
                self._db.execute("VACUUM")
        return removed

    def export_jsonl(self, out: TextIO, **filters: Any) -> int:
        """Write matching runs as JSON lines, oldest first; return how many."""
        written = 0
        for trajectory in self.query(newest_first=False, **filters):
            out.write(json.dumps(trajectory.to_dict(), ensure_ascii=False) + "\n")
            written += 1
        return written
