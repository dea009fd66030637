"""A person's feedback on the last answer: a rating, and with a better answer a preference pair.

Both are kept by ``strop.feedback.FeedbackLog``, where the improvement loop reads them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from strop.errors import StropError
from strop.feedback import FeedbackLog
from strop.training.pairs import decisions, human_pair
from strop.trajectories import Trajectory

Context = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]  # Agent.context


def better_action(answer: str) -> str:
    """The ``final_answer`` action a person would have wanted, as the model would write it."""
    return json.dumps({"tool": "final_answer", "args": {"answer": answer, "sources": []}}, separators=(",", ":"))


class ChatFeedback:
    """Feedback on the chat's last answer, kept by the state folder's ``FeedbackLog``."""

    def __init__(self, folder: Path):
        self.log = FeedbackLog(folder)

    def rate(self, trajectory: Trajectory, rating: int, note: str = "") -> None:
        """Record +1 or -1 for a run."""
        self.log.rate(trajectory.id, rating, thread=trajectory.thread_id, note=note)

    def prefer(self, context: Context, trajectory: Trajectory, better: str) -> dict[str, Any]:
        """Record ``better`` as preferred over the run's final answer; returns the pair."""
        steps = decisions(trajectory)
        if not steps:
            raise StropError("The last run took no action to improve on.", fix="Ask a question first.")
        last = steps[-1]  # an answer made from passages is taught as that plain call's reply
        pair = human_pair(last.read or context(last.history), better if last.read else better_action(better),
                          last.action, note=f"chat feedback on trajectory {trajectory.id}")
        pair["provenance"]["rejected_trajectory"] = trajectory.id
        self.log.add_pair(pair)
        self.rate(trajectory, -1, better)
        return pair
