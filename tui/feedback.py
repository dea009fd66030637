"""A person's feedback on the last answer: a rating, and with a better answer a preference pair.

Pairs go to ``<state>/feedback/pairs.jsonl``, where the improvement loop reads them
(``Improver.human_pairs``); ratings go to ``ratings.jsonl`` beside them. Each record is one line,
fsynced, so a crash never leaves half a record behind a good one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from strop.errors import StropError
from strop.files import append_line
from strop.training.pairs import decisions, human_pair
from strop.training.trajectories import Trajectory

Context = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]  # Agent.context


def better_action(answer: str) -> str:
    """The ``final_answer`` action a person would have wanted, as the model would write it."""
    return json.dumps({"tool": "final_answer", "args": {"answer": answer, "sources": []}}, separators=(",", ":"))


class FeedbackLog:
    def __init__(self, state_dir: Path):
        self.dir = state_dir / "feedback"
        self.pairs_path = self.dir / "pairs.jsonl"
        self.ratings_path = self.dir / "ratings.jsonl"

    def rate(self, trajectory: Trajectory, rating: int, note: str = "") -> None:
        """Record +1 or -1 for a run."""
        append_line(self.ratings_path, {"trajectory": trajectory.id, "thread": trajectory.thread_id, "rating": rating,
                                    "note": note, "at": time.time()})

    def prefer(self, context: Context, trajectory: Trajectory, better: str) -> dict[str, Any]:
        """Record ``better`` as preferred over the run's final action; returns the pair."""
        steps = decisions(trajectory)
        if not steps:
            raise StropError("The last run took no action to improve on.", fix="Ask a question first.")
        history, rejected = steps[-1]
        pair = human_pair(context(history), better_action(better), rejected,
                          note=f"chat feedback on trajectory {trajectory.id}")
        pair["provenance"]["rejected_trajectory"] = trajectory.id
        append_line(self.pairs_path, pair)
        self.rate(trajectory, -1, better)
        return pair
