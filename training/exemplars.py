"""Learning exemplars from past runs: successful trajectories kept in the memory, for agents to be shown.

``learn`` turns runs that succeeded into compact episodes (the question, then each action with what
its tool returned, as in ``agents/prompts/exemplars.yaml``) and stores them in their own memory
namespace; an id made from the episode's content means a repeated episode adds nothing. Agents retrieve
them with ``strop.agents.learned.LearnedExemplars`` ([agent] learned_exemplars).

A run counts as successful when it answered without errors, invalid actions or tool errors, and
(``require="verified"``, the default) it also passed its scenario graders or a person rated it +1.
A failed grade or a -1 rating always keeps a run out, and so does being an evaluation of a gate or
test case: those cases select and measure adapters, and must not become the model's examples.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from strop.agents.learned import SOURCE
from strop.config import Settings
from strop.feedback import FeedbackLog
from strop.scenarios.runs import RunStore
from strop.tools.toolkit import LazyMemory
from strop.trajectories import Trajectory, TrajectoryStore

Require = Literal["verified", "clean"]
HELD_OUT_SPLITS = ("gate", "test")  # an exemplar from these would show the model the answers it is selected on


@dataclass
class LearnReport:
    """What ``learn`` did."""

    scanned: int = 0
    qualified: int = 0
    added: int = 0
    already_stored: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # why runs were left out, with counts

    def summary(self) -> dict[str, Any]:
        return {"scanned": self.scanned, "qualified": self.qualified, "added": self.added,
                "already_stored": self.already_stored, "left_out": dict(sorted(self.reasons.items()))}


@dataclass(frozen=True)
class Evidence:
    """Verdicts on runs from outside the run itself: scenario grades and people's ratings."""

    passed: frozenset[str] = frozenset()
    failed: frozenset[str] = frozenset()
    held_out: frozenset[str] = frozenset()  # runs of gate or test cases: never exemplars, whatever their grade

    @classmethod
    def gather(cls, settings: Settings) -> Evidence:
        passed, failed, held_out = set(), set(), set()
        for run in RunStore(settings.eval_dir).list():
            for record in run.records():
                if not record.get("trajectory"):
                    continue
                if record.get("split", run.options.split) in HELD_OUT_SPLITS:
                    held_out.add(record["trajectory"])
                else:
                    (passed if record.get("passed") else failed).add(record["trajectory"])
        ratings = FeedbackLog(settings.feedback_dir).ratings()  # the latest rating of a run wins
        passed |= {t for t, r in ratings.items() if r > 0}
        failed |= {t for t, r in ratings.items() if r < 0}
        return cls(frozenset(passed - failed - held_out), frozenset(failed), frozenset(held_out))


def exemplar_of(trajectory: Trajectory) -> dict[str, Any] | None:
    """The run as an episode ``{"question", "steps": [{"action", "result"?}]}``, or None if it is not one.

    Only single-question runs qualify: a later turn of a conversation may lean on earlier ones.
    """
    messages = trajectory.messages
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if len(users) != 1 or messages[users[0]]["content"] != trajectory.prompt:
        return None
    steps: list[dict[str, Any]] = []
    for message in messages[users[0] + 1:]:
        if message["role"] == "assistant" and message.get("tool_calls"):
            call = message["tool_calls"][0]["function"]  # parsed already, so a fenced action reads the same
            steps.append({"action": {"tool": call["name"], "args": json.loads(call["arguments"])}})
        elif message["role"] == "tool" and steps:
            steps[-1]["result"] = message["content"]
    finished = steps and steps[-1]["action"].get("tool") == "final_answer"
    return {"question": trajectory.prompt, "steps": steps} if finished else None


def why_not(trajectory: Trajectory, evidence: Evidence, require: Require) -> str | None:
    """Why the run cannot be an exemplar, or None if it can."""
    if trajectory.id in evidence.held_out:
        return "a gate or test evaluation"
    if trajectory.status != "answered" or trajectory.errors:
        return "not answered"
    if any(s.error or s.name == "invalid_action" for s in trajectory.steps):
        return "tool error or invalid action"
    if trajectory.id in evidence.failed:
        return "failed its graders or rated -1"
    if require == "verified" and trajectory.id not in evidence.passed:
        return "not verified (no passed grade or +1 rating)"
    if exemplar_of(trajectory) is None:
        return "part of a conversation"
    return None


def learn(settings: Settings, store: TrajectoryStore, memory: LazyMemory, *, require: Require = "verified",
          limit: int | None = None, scenario: str | None = None) -> LearnReport:
    """Store the successful runs among the latest ``limit`` (all by default) as exemplars."""
    from strop.memory.core import IngestReport

    evidence = Evidence.gather(settings)
    report, episodes = LearnReport(), []
    for trajectory in store.query(limit=limit, scenario=scenario, newest_first=True):
        report.scanned += 1
        reason = why_not(trajectory, evidence, require)
        if reason:
            report.reasons[reason] = report.reasons.get(reason, 0) + 1
        else:
            episodes.append((trajectory.id, exemplar_of(trajectory)))
    report.qualified = len(episodes)
    stored = IngestReport()
    with memory as mem:
        mem.store_chunks([_chunk(e, t, settings.agent.exemplar_namespace) for t, e in episodes], stored)
    report.added, report.already_stored = stored.added, stored.skipped
    return report


def _chunk(episode: dict[str, Any], trajectory_id: str, namespace: str):
    from strop.memory.ingest import Document, chunk_document

    content = json.dumps(episode, ensure_ascii=False)  # key order kept: actions are shown as the model wrote them
    # The id comes from the episode's content: the same question answered the same way is stored once.
    key = "exemplar-" + hashlib.sha256(content.encode()).hexdigest()[:24]
    document = Document(episode["question"], source=SOURCE, title="", doc_id=key,
                        fields={"episode": content, "trajectory": trajectory_id})
    return chunk_document(document, namespace, lambda text: [text])[0]
