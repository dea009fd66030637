"""People's feedback on runs, kept in ``feedback_dir`` (default ``<state>/feedback/``).

``ratings.jsonl`` holds +1/-1 ratings of runs, ``pairs.jsonl`` preference pairs a person gave (a better
answer typed in chat). Each record is one fsynced line, so a crash never leaves half a record behind a
good one. This module is the only one that knows those paths and how to read them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from strop.files import append_line, read_lines


class FeedbackLog:
    """The feedback files of one state folder."""

    def __init__(self, folder: Path):
        self.dir = folder
        self.pairs_path = folder / "pairs.jsonl"
        self.ratings_path = folder / "ratings.jsonl"

    def rate(self, trajectory: str, rating: int, thread: str | None = None, note: str = "") -> None:
        """Record +1 or -1 for the run ``trajectory``."""
        append_line(self.ratings_path, {"trajectory": trajectory, "thread": thread, "rating": rating,
                                        "note": note, "at": time.time()})

    def add_pair(self, pair: dict[str, Any]) -> None:
        """Keep a preference pair a person gave (its provenance says ``source: human``)."""
        append_line(self.pairs_path, pair)

    def human_pairs(self) -> list[dict[str, Any]]:
        """The preference pairs people gave, oldest first (a pair given twice is here twice: see ``checksum``)."""
        return [p for p in read_lines(self.pairs_path) if p.get("provenance", {}).get("source") == "human"]

    def ratings(self) -> dict[str, int]:
        """Each rated run's latest rating (+1 or -1), by trajectory id."""
        latest: dict[str, int] = {}
        for row in read_lines(self.ratings_path):
            if "trajectory" in row and isinstance(row.get("rating"), int):
                latest[row["trajectory"]] = row["rating"]
        return latest


def checksum(pair: dict[str, Any]) -> str:
    """What makes a preference pair itself: its prompt, chosen and rejected messages (not its notes or time)."""
    content = json.dumps([pair.get("prompt"), pair.get("chosen"), pair.get("rejected")], sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:24]


def question_of(pair: dict[str, Any]) -> str:
    """The last user message of a pair's prompt: the question the pair answers."""
    users = [m for m in pair.get("prompt") or [] if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1].get("content") or "") if users else ""
