"""A critic that needs no gold answer: self-consistency over the K episodes of one prompt.

The answers the episodes reach are normalised (a number, folded text, or a canonical call of a declared
function) and counted as votes. Episodes that reached the answer a clear majority reached score above those
that reached a minority answer or none, by the share of the votes (as in ScPO and TTRL); a group without a
clear majority, or where every episode agrees, gives equal scores and so no preference pair.

Questions answered from memory are scored by search relevance (``memory_vote = "relevance"``, the default): no vote,
but what each episode's searches found, the passage that holds most of the question's content words, against the
best any episode of the group found (:func:`by_relevance`). Or (``"answer"``) an episode's vote counts only when it
is grounded: it searched before answering and its answer is found in a passage its own search returned. Or
(``"passage"``) it votes for its source, the passage its last search ranked first: a question written from one
passage is answered from it, so searches that agree on it likely found the answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from strop.agents.graph import SEARCH
from strop.agents.grounding import NOT_FOUND, Passage, content_words, parse_passages
from strop.scenarios.graders import NUMBER
from strop.scenarios.runner import outcome_of
from strop.tools.declared import tool_name
from strop.training.sources import normal
from strop.trajectories import Trajectory

VERDICTS = ("majority", "unanimous", "no_majority", "no_answers", "all_errored", "relevant", "alike")
NEUTRAL = 0.5  # the score of every episode of a group that gives no preference

_CITATION = re.compile(r"\[[0-9a-f]{6,}\]")
_FILLER = {"the", "answer", "is", "a", "an", "result", "so", "final", "it", "equals", "of", "total", "which",
           "that", "are", "there", "was", "will", "be", "and", "to", "in", "we", "get", "gives", "has", "have"}
NUMBER_ANSWER_WORDS = 6  # an answer with a number and at most this many other words is that number
SAME_TEXT = 0.6  # two text answers agree when this share of their content words is shared (Jaccard)
# A passage holding this much less of the question than the best another episode found is a worse find (a question
# written from a passage shares most of its words; measured in the README, "Search relevance").
RELEVANCE_MARGIN = 0.2
NEAR_MISS = 0.75  # the score of a find within the margin of the best: no pair with the best at the default min_margin


@dataclass(frozen=True)
class Episode:
    """What the vote needs of one episode: its answer's key (None: no answer) and whether it is grounded."""

    trajectory: str
    errored: bool = False
    key: str | None = None
    grounded: bool | None = None  # None: not a memory question
    relevance: float | None = None  # memory_vote "relevance": the share of the question its best passage holds


@dataclass
class Consensus:
    """The verdict on one prompt's group and each episode's score (None for episodes that failed to run)."""

    verdict: str  # one of VERDICTS
    scores: dict[str, float | None]
    share: float = 0.0  # the vote share of the most-voted answer
    answer: str | None = None  # the most-voted answer's key
    votes: dict[str, int] = field(default_factory=dict)

    def why(self, trajectory: str) -> list[str]:
        if self.scores.get(trajectory) is None:
            return ["the episode failed to run"]
        if self.verdict in ("relevant", "alike"):
            return [self.relevance_why(self.scores[trajectory])]
        if self.verdict != "majority":
            return [f"self-consistency: {self.verdict.replace('_', ' ')} ({self.share:.0%} top share): neutral"]
        side = "majority" if self.scores[trajectory] > NEUTRAL else "minority or no"
        return [f"self-consistency: {side} vote (top vote {self.answer!r} has {self.share:.0%} of the votes)"]

    def relevance_why(self, score: float) -> str:
        best = f"the best passage found holds {self.share:.0%} of the question's words"
        if self.verdict == "alike":
            return f"search relevance: every episode found about as much ({best}): neutral"
        found = "found it" if score == 1.0 else "a near miss" if score == NEAR_MISS else "found clearly less"
        return f"search relevance: {found} ({best})"


# -- normalised answers ------------------------------------------------------------------------------------------

def answer_key(trajectory: Trajectory, declared: Iterable[str] = (), call_vote: str = "function") -> str | None:
    """The normalised answer of an episode: the last call of a declared function (its name, or with ``call_vote``
    "call" its name and canonical arguments) when the prompt declares functions, else the final answer as a number
    or folded text."""
    outcome = outcome_of(trajectory)
    names = {tool_name(n) for n in declared}
    if names:
        calls = [(name, args) for name, args in outcome.calls if name in names]
        if not calls:
            return None
        return f"call:{calls[-1][0]}" if call_vote == "function" else call_key(*calls[-1])
    return text_key(outcome.answer, trajectory.prompt)


def call_key(name: str, args: dict[str, Any]) -> str:
    """A call as ``call:name{sorted canonical args}``: omitted and null arguments alike, strings folded."""
    kept = {k: _canonical_value(v) for k, v in args.items() if v is not None and v != ""}
    return f"call:{name}" + json.dumps(kept, sort_keys=True)


def _canonical_value(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _number(float(value))
    if isinstance(value, str):
        as_number = NUMBER.fullmatch(value.strip())
        return _number(float(value.replace(",", ""))) if as_number else normal(value)
    if isinstance(value, list):
        return [_canonical_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical_value(v) for k, v in sorted(value.items())}
    return value


def text_key(answer: str | None, question: str = "") -> str | None:
    """``num:<value>`` for an answer that is essentially a number, else ``text:<folded words>`` without the words
    of the question it restates (a small model repeats the question around its answer); None for no answer, an
    abstention, or one that only restates the question."""
    if answer is None:
        return None
    answer = _CITATION.sub(" ", answer)
    folded = normal(answer)
    if not folded or folded == normal(NOT_FOUND):
        return None
    numbers = NUMBER.findall(answer)
    others = [w for w in normal(NUMBER.sub(" ", answer)).split() if w not in _FILLER]
    if numbers and len(others) <= NUMBER_ANSWER_WORDS:
        try:
            return "num:" + _number(float(numbers[-1].replace(",", "")))
        except ValueError:
            pass
    asked = set(normal(question).split())
    novel = [w for w in folded.split() if w not in asked and w not in _FILLER]
    return "text:" + " ".join(novel) if novel else None


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:.6g}"


def same_answer(a: str, b: str) -> bool:
    """Keys that count as one answer: equal, or text answers sharing most of their content words."""
    if a == b:
        return True
    if not (a.startswith("text:") and b.startswith("text:")):
        return False
    wa, wb = content_words(a[5:]), content_words(b[5:])
    return bool(wa and wb) and len(wa & wb) / len(wa | wb) >= SAME_TEXT


# -- grounding ---------------------------------------------------------------------------------------------------

def grounded(trajectory: Trajectory, overlap: float) -> bool:
    """The episode searched memory before it answered, and one passage its own search returned holds at least
    ``overlap`` of the answer's content words that the question does not already hold."""
    outcome = outcome_of(trajectory)
    if not outcome.answer or text_key(outcome.answer) is None:
        return False
    results = search_results(trajectory)
    if not results:
        return False
    novel = content_words(_CITATION.sub(" ", outcome.answer)) - content_words(trajectory.prompt)
    if not novel:
        return False
    passages = [content_words(p.text) for found in results for p in found]
    return any(len(novel & words) / len(novel) >= overlap for words in passages)


def relevance(trajectory: Trajectory) -> float:
    """The share of the question's content words held by the passage, of all the episode's searches returned,
    that holds most of them; 0 when it did not answer or found nothing."""
    question = content_words(trajectory.prompt)
    found = [content_words(p.text) for passages in search_results(trajectory) for p in passages]
    if not question or not found or not outcome_of(trajectory).answer:
        return 0.0
    return max(len(question & words) for words in found) / len(question)


def search_texts(trajectory: Trajectory) -> list[str]:
    """What each of the episode's memory searches returned, in order."""
    return [str(m.get("content") or "") for m in trajectory.messages
            if m.get("role") == "tool" and m.get("name") == SEARCH]


def search_results(trajectory: Trajectory) -> list[list[Passage]]:
    """The passages each of the episode's searches returned, in order (an empty list for one that found none)."""
    return [parse_passages(text) for text in search_texts(trajectory)]


def searched(trajectory: Trajectory) -> bool:
    return bool(search_texts(trajectory))


def source_key(trajectory: Trajectory) -> str | None:
    """``passage:<id>`` of the passage the episode's last search ranked first; None when it did not answer or its
    searches found nothing."""
    found = [passages for passages in search_results(trajectory) if passages]
    return f"passage:{found[-1][0].id}" if found and outcome_of(trajectory).answer else None


def episode_of(trajectory: Trajectory | None, trajectory_id: str, *, failed: bool, declared: Iterable[str] = (),
               memory: bool = False, overlap: float = 0.75, memory_vote: str = "answer",
               call_vote: str = "function") -> Episode:
    """One episode as the vote sees it: a memory question's by its grounded answer or its source (``memory_vote``),
    any other by its answer (a declared call by ``call_vote``)."""
    if failed or trajectory is None or trajectory.status == "error":
        return Episode(trajectory_id, errored=True)
    if memory and memory_vote == "passage":
        return Episode(trajectory_id, key=source_key(trajectory))
    if memory and memory_vote == "relevance":
        return Episode(trajectory_id, relevance=relevance(trajectory))
    return Episode(trajectory_id, key=answer_key(trajectory, declared, call_vote),
                   grounded=grounded(trajectory, overlap) if memory else None)


# -- the vote ----------------------------------------------------------------------------------------------------

def consensus(episodes: list[Episode], min_share: float = 0.5) -> Consensus:
    """Scores from the vote of one prompt's episodes.

    A vote is an answered (and, for memory questions, grounded) episode. The most-voted answer wins when its
    share of the episodes that ran is at least ``min_share`` and it has strictly more votes than the next one;
    its episodes then score ``0.5 + share / 2``, every other episode ``own share / 2`` (0 without a vote).
    Otherwise (no clear majority, every episode agreeing, no votes at all, nothing ran) all score 0.5.
    Episodes of memory questions scored by relevance (``memory_vote = "relevance"``) cast no vote: :func:`by_relevance`.
    """
    ran = [e for e in episodes if not e.errored]
    scores: dict[str, float | None] = {e.trajectory: None for e in episodes if e.errored}
    if not ran:
        return Consensus("all_errored", scores)
    if any(e.relevance is not None for e in ran):
        return by_relevance(episodes)
    votes = clusters(e.key for e in ran if e.key is not None and e.grounded is not False)
    neutral = scores | {e.trajectory: NEUTRAL for e in ran}
    if not votes:
        return Consensus("no_answers", neutral)
    ranked = sorted(votes.items(), key=lambda kv: kv[1], reverse=True)
    (top, count), runner_up = ranked[0], (ranked[1][1] if len(ranked) > 1 else 0)
    share = count / len(ran)
    summary = {"share": share, "answer": top, "votes": dict(ranked)}
    if count == len(ran):
        return Consensus("unanimous", neutral, **summary)
    if count <= runner_up or share < min_share:
        return Consensus("no_majority", neutral, **summary)
    for e in ran:
        cluster = _cluster_of(e.key, votes) if e.key is not None and e.grounded is not False else None
        own = votes[cluster] / len(ran) if cluster is not None else 0.0
        scores[e.trajectory] = NEUTRAL + share / 2 if cluster == top else own / 2
    return Consensus("majority", scores, **summary)


def by_relevance(episodes: list[Episode], margin: float = RELEVANCE_MARGIN) -> Consensus:
    """Scores of a memory question's episodes from what their searches found, not from a vote: those whose best
    passage holds the most of the question score 1, those whose best holds at least ``margin`` less of it 0, those
    between ``NEAR_MISS``. A group where every find is within ``margin`` of the best scores alike (no pair)."""
    ran = [e for e in episodes if not e.errored]
    scores: dict[str, float | None] = {e.trajectory: None for e in episodes if e.errored}
    if not ran:
        return Consensus("all_errored", scores)
    best = max(e.relevance or 0.0 for e in ran)
    short = {e.trajectory: best - (e.relevance or 0.0) for e in ran}
    margin -= 1e-9  # 0.6 - 0.4 is the margin 0.2, whatever the float says
    if all(gap < margin for gap in short.values()):
        return Consensus("alike", scores | {e.trajectory: NEUTRAL for e in ran}, share=best)
    for t, gap in short.items():
        scores[t] = 1.0 if gap == 0 else 0.0 if gap >= margin else NEAR_MISS
    return Consensus("relevant", scores, share=best)


def clusters(keys: Iterable[str]) -> dict[str, int]:
    """Votes per answer; a key joins the first earlier answer it is the same as."""
    votes: dict[str, int] = {}
    for key in keys:
        home = _cluster_of(key, votes) or key
        votes[home] = votes.get(home, 0) + 1
    return votes


def _cluster_of(key: str, votes: dict[str, int]) -> str | None:
    return next((k for k in votes if same_answer(k, key)), None)
