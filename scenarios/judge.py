"""The LLM judge: scores answers against a rubric (scenario graders) and compares two answers (the critic),
through an OpenAI-compatible server.

Its verdicts are schema-constrained JSON, reasoning first and score or winner last, so even a small judge
model reasons before it decides and always returns something parseable; anything else is "no verdict".
A comparison is asked in both orders and averaged, which cancels a judge's preference for a position.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import openai

from strop.aio import at_most
from strop.config import CriticSettings
from strop.errors import Problem, StropError
from strop.files import problems_of
from strop.prompts import load_prompt
from strop.serving.endpoint import Endpoint

SCORES = (1, 2, 3, 4, 5)
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"reasoning": {"type": "string", "maxLength": 600}, "score": {"enum": list(SCORES)}},
    "required": ["reasoning", "score"],
    "additionalProperties": False,
}
WINNERS = ("A", "B", "tie")
PREFERENCE_SCHEMA = {
    "type": "object",
    "properties": {"reasoning": {"type": "string", "maxLength": 600}, "winner": {"enum": list(WINNERS)}},
    "required": ["reasoning", "winner"],
    "additionalProperties": False,
}


MAX_RANKED = 9  # answers one ranking shows (labelled 1-9, one token each)


def ranking_schema(n: int) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": ["reasoning", "best"],
            "properties": {"reasoning": {"type": "string", "maxLength": 600},
                           "best": {"enum": [str(i + 1) for i in range(n)]}}}


@dataclass(frozen=True)
class Ranking:
    """The judge's pick among the answers of one prompt, averaged over several orders of presentation."""

    best: list[float]  # per answer (in the order given): the probability that it is the best one
    orders: int  # orders asked
    failed: int  # orders without a usable verdict
    reasoning: tuple[str, ...] = ()
    from_logprobs: int = 0  # orders read from the logprobs of the pick (the rest from the pick alone)

    def preference(self, index: int) -> float:
        """0..1 with 0.5 for an answer picked as often as chance (1/n), 1 from twice that, 0 for never."""
        n = len(self.best)
        if self.failed == self.orders or n < 2:
            return 0.5
        return max(0.0, min(1.0, 0.5 + (self.best[index] - 1 / n) * n / 2))


@dataclass(frozen=True)
class Preference:
    """Which of two answers the judge prefers, averaged over both orders of presentation."""

    p_a: float  # probability that answer A is the better one; 0.5 is no preference
    winner: Literal["a", "b", "tie"]
    reasoning: tuple[str, str]  # the judge's reasoning with A shown first, then with B shown first
    source: Literal["logprobs", "verdict", "reward", "none"]  # none: no usable verdict; the reasoning says why


@dataclass(frozen=True)
class Reading:
    """One order's verdict: the probability that the answer shown first is better (None: no verdict)."""

    p_first: float | None
    reasoning: str
    from_logprobs: bool = False


class LLMJudge:
    """Rubric scoring and pairwise comparison by a model; the judge sees no adapter, only the base model or a
    stronger one."""

    def __init__(self, endpoint: Endpoint, settings: CriticSettings, timeout_s: float = 120.0,
                 prompts_dir: Path | None = None):
        self.endpoint = endpoint
        self.settings = settings
        self.client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key,
                                         timeout=timeout_s, max_retries=2)
        self.rubric_prompt = load_prompt("strop.scenarios", "rubric", prompts_dir)
        self.pairwise_prompt = load_prompt("strop.scenarios", "pairwise", prompts_dir)
        self.rank_prompt = load_prompt("strop.scenarios", "rank", prompts_dir)

    async def rubric(self, question: str, answer: str, rubric: str) -> tuple[float | None, str]:
        """A score in 0..1 (None when the judge failed) and the judge's reasoning."""
        messages = self.rubric_prompt.messages(question=question, answer=answer, rubric=rubric)
        try:
            reply = await self._ask(messages, "verdict", VERDICT_SCHEMA)
        except openai.APIError as exc:
            return None, f"judge call failed: {type(exc).__name__}: {exc}"
        return parse_verdict(reply.choices[0].message.content or "")

    async def compare(self, question: str, answer_a: str, answer_b: str) -> Preference:
        """Which answer is better, asked with A first and with B first; never raises for a failed judge."""
        first, second = await asyncio.gather(self._read_pair(question, answer_a, answer_b),
                                             self._read_pair(question, answer_b, answer_a))
        return combine(first, second, self.settings.tie_margin)

    async def rank(self, question: str, answers: list[str], checklist: list[str], orders: int = 2,
                   seed: int = 0) -> Ranking:
        """Which of ``answers`` (2 to 9) is the best, asked in ``orders`` rotations of a seeded shuffle so each
        answer is shown in different places; never raises for a failed judge."""
        if not 2 <= len(answers) <= MAX_RANKED:
            raise ValueError(f"a ranking needs 2 to {MAX_RANKED} answers, not {len(answers)}")
        shown = presentation_orders(len(answers), orders, seed)
        readings = await asyncio.gather(*(self._read_ranking(question, [answers[i] for i in order], checklist)
                                          for order in shown))
        return combine_rankings(len(answers), shown, readings)

    async def compare_ranked(self, question: str, answer_a: str, answer_b: str) -> Preference:
        """A pairwise preference from the group ranker: the two answers ranked in both orders with the question's
        checklist."""
        ranking = await self.rank(question, [answer_a, answer_b], checklist(question), orders=2)
        source = "none" if ranking.failed == ranking.orders else (
            "logprobs" if ranking.from_logprobs == ranking.orders else "verdict")
        p_a = ranking.best[0]
        return Preference(p_a, decide(p_a, self.settings.tie_margin) if source != "none" else "tie",
                          (ranking.reasoning + ("", ""))[:2], source)

    async def _read_ranking(self, question: str, answers: list[str], checklist: list[str]
                            ) -> tuple[list[float] | None, str, bool]:
        messages = self.rank_prompt.messages(
            question=question, checklist="\n".join(f"- {item}" for item in checklist),
            answers="\n".join(f"{i + 1}. {_one_line(a)}" for i, a in enumerate(answers)))
        try:
            reply = await self._ask(messages, "ranking", ranking_schema(len(answers)), logprobs=True)
        except openai.APIError as exc:
            return None, f"judge call failed: {type(exc).__name__}: {exc}", False
        choice = reply.choices[0]
        return read_ranking(choice.message.content or "", choice.logprobs.content if choice.logprobs else None,
                            len(answers))

    async def _read_pair(self, question: str, first: str, second: str) -> Reading:
        messages = self.pairwise_prompt.messages(question=question, first=first, second=second)
        try:
            reply = await self._ask(messages, "preference", PREFERENCE_SCHEMA, logprobs=True)
        except openai.APIError as exc:
            return Reading(None, f"judge call failed: {type(exc).__name__}: {exc}")
        choice = reply.choices[0]
        tokens = choice.logprobs.content if choice.logprobs else None
        return read_preference(choice.message.content or "", tokens)

    async def _ask(self, messages: list[dict[str, str]], name: str, schema: dict, logprobs: bool = False) -> Any:
        extra = {"logprobs": True, "top_logprobs": 5} if logprobs else {}
        return await self.client.chat.completions.create(
            model=self.endpoint.model, temperature=0.0, max_tokens=self.settings.max_tokens, **extra,
            messages=messages,
            extra_body={"response_format": {"type": "json_schema", "json_schema": {
                "name": name, "schema": schema, "strict": True}}})

    async def close(self) -> None:
        await self.client.close()


def parse_verdict(text: str) -> tuple[float | None, str]:
    """``(score in 0..1, reasoning)`` from the verdict JSON; ``(None, text)`` when it is not one."""
    try:
        verdict = json.loads(text)
        score = verdict["score"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None, text
    if score not in SCORES:
        return None, text
    return (score - 1) / (len(SCORES) - 1), str(verdict.get("reasoning", ""))


def read_preference(text: str, tokens: list | None) -> Reading:
    """One order's verdict: from the winner token's logprobs where there are some, else from the JSON."""
    try:
        verdict = json.loads(text)
        winner, reasoning = verdict["winner"], str(verdict.get("reasoning", ""))
    except (json.JSONDecodeError, KeyError, TypeError):
        return Reading(None, f"no verdict in the judge's reply: {text[:200]!r}")
    if winner not in WINNERS:
        return Reading(None, f"unknown winner {winner!r} in the judge's reply")
    p_first = winner_probability(tokens or [])
    if p_first is not None:
        return Reading(p_first, reasoning, from_logprobs=True)
    return Reading({"A": 1.0, "B": 0.0, "tie": 0.5}[winner], reasoning)


_WINNER_VALUE = re.compile(r'"winner"\s*:\s*"')
_FORBIDDEN = -1000.0  # structured output reports the tokens its grammar forbids at about -9999


def winner_probability(tokens: list) -> float | None:
    """P(first answer better) from the top logprobs of the token that starts the winner value.

    A tie counts half, so a judge torn between A and tie reads 0.75. None when the token or its
    alternatives cannot be found (a server without logprobs, an unusual tokenization).
    """
    text = "".join(t.token for t in tokens)
    matches = list(_WINNER_VALUE.finditer(text))
    if not matches:
        return None
    start, offset = matches[-1].end(), 0  # the winner is the last key
    for token in tokens:
        if offset + len(token.token) > start:
            return _alternatives(token, start - offset)
        offset += len(token.token)
    return None


def _alternatives(token: Any, cut: int) -> float | None:
    """Probabilities of A, B and tie among a token's alternatives, past the part before the value (``cut``)."""
    head = token.token[:cut]
    mass = {"A": 0.0, "B": 0.0, "t": 0.0}
    for alt in token.top_logprobs or []:
        if alt.logprob <= _FORBIDDEN or not alt.token.startswith(head) or len(alt.token) <= cut:
            continue
        key = alt.token[cut]
        if key in mass:
            mass[key] += math.exp(alt.logprob)
    total = sum(mass.values())
    if total <= 0.0:
        return None
    return (mass["A"] + mass["t"] / 2) / total


def presentation_orders(n: int, orders: int, seed: int) -> list[list[int]]:
    """``orders`` (at most ``n``) rotations of a seeded shuffle of ``range(n)``: each answer takes a different
    place in each, so a judge that favours a position spreads its favour over all answers."""
    base = list(range(n))
    random.Random(seed).shuffle(base)
    return [base[k:] + base[:k] for k in range(max(1, min(orders, n)))]


def read_ranking(text: str, tokens: list | None, n: int) -> tuple[list[float] | None, str, bool]:
    """One order's pick as probabilities per shown answer: from the logprobs of the ``best`` value's token where
    there are some, else all on the picked one; None when the reply holds no valid pick."""
    try:
        verdict = json.loads(text)
        best, reasoning = int(verdict["best"]) - 1, str(verdict.get("reasoning", ""))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None, f"no pick in the judge's reply: {text[:200]!r}", False
    if not 0 <= best < n:
        return None, f"pick {best + 1} is not one of the {n} answers", False
    mass = value_probabilities(tokens or [], "best", [str(i + 1) for i in range(n)])
    if mass is None:
        return [float(i == best) for i in range(n)], reasoning, False
    return mass, reasoning, True


def value_probabilities(tokens: list, key: str, labels: list[str]) -> list[float] | None:
    """The probability of each one-character label as the value of ``key``, from the top logprobs of the token
    where that value starts; None when it cannot be found."""
    text = "".join(t.token for t in tokens)
    matches = list(re.finditer(rf'"{key}"\s*:\s*"', text))
    if not matches:
        return None
    start, offset = matches[-1].end(), 0
    for token in tokens:
        if offset + len(token.token) > start:
            cut, mass = start - offset, dict.fromkeys(labels, 0.0)
            for alt in token.top_logprobs or []:
                if alt.logprob > _FORBIDDEN and alt.token.startswith(token.token[:cut]) and len(alt.token) > cut \
                        and alt.token[cut] in mass:
                    mass[alt.token[cut]] += math.exp(alt.logprob)
            total = sum(mass.values())
            return [mass[label] / total for label in labels] if total > 0 else None
        offset += len(token.token)
    return None


def combine_rankings(n: int, shown: list[list[int]], readings: list[tuple[list[float] | None, str, bool]]
                     ) -> Ranking:
    """Each answer's probability of being best, averaged over the orders that gave a verdict."""
    best, used = [0.0] * n, 0
    for order, (probabilities, _, _) in zip(shown, readings, strict=True):
        if probabilities is None:
            continue
        used += 1
        for place, answer in enumerate(order):
            best[answer] += probabilities[place]
    best = [b / used for b in best] if used else [1 / n] * n
    return Ranking(best, len(shown), len(shown) - used, tuple(why for _, why, _ in readings),
                   sum(lp for probabilities, _, lp in readings if probabilities is not None))


def checklist(question: str, functions: list[str] | tuple[str, ...] = (), memory: bool = False) -> list[str]:
    """A few checks an answer to ``question`` must pass, derived from the question itself (no gold answer)."""
    items = ["It answers exactly what the question asks."]
    if functions:
        items.append(f"It calls {' or '.join(functions)} with every argument taken from the question.")
    elif re.search(r"\d", question) or re.search(r"\b(how (many|much)|total|sum|difference|product)\b",
                                                   question, re.IGNORECASE):
        items.append("Its final answer is one number that follows from the numbers in the question.")
    if memory:
        items.append("It says what the retrieved passage says, and nothing the passage does not support.")
    else:
        items.append("It states nothing false or made up.")
    return items


def _one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + " ..."


def combine(first: Reading, second: Reading, tie_margin: float) -> Preference:
    """Average the A-first and B-first readings; a judge that always picks one position reads 0.5."""
    reasoning = (first.reasoning, second.reasoning)
    if first.p_first is None or second.p_first is None:
        return Preference(0.5, "tie", reasoning, "none")
    p_a = (first.p_first + 1.0 - second.p_first) / 2
    source = "logprobs" if first.from_logprobs and second.from_logprobs else "verdict"
    return Preference(p_a, decide(p_a, tie_margin), reasoning, source)


def decide(p_a: float, tie_margin: float) -> Literal["a", "b", "tie"]:
    if abs(p_a - 0.5) < tie_margin:
        return "tie"
    return "a" if p_a > 0.5 else "b"


# --- calibration against human preference labels --------------------------------------------------------------

PAIR_FIELDS = ("id", "category", "prompt", "chosen", "rejected")


@dataclass(frozen=True)
class LabelledPair:
    """A human-labelled preference pair; ``source`` is the file it came from."""

    id: str
    category: str
    prompt: str
    chosen: str
    rejected: str
    source: str


@dataclass(frozen=True)
class Outcome:
    """The judge's preference on one labelled pair, with the human-chosen answer shown as A or as B."""

    pair: LabelledPair
    chosen_as: Literal["a", "b"]
    preference: Preference
    seconds: float = 0.0  # both orders, queueing on the server included

    @property
    def verdict(self) -> Literal["agree", "disagree", "tie"]:
        if self.preference.winner == "tie":
            return "tie"
        return "agree" if self.preference.winner == self.chosen_as else "disagree"

    @property
    def p_chosen(self) -> float:
        return self.preference.p_a if self.chosen_as == "a" else 1.0 - self.preference.p_a


def load_pairs(path: Path) -> tuple[list[LabelledPair], list[Problem]]:
    """Pairs from a JSONL file, and the lines skipped (with line number and why)."""
    if not path.is_file():
        raise StropError(f"Preference file {path} does not exist.",
                         fix="Pass JSONL files with fields id, category, prompt, chosen, rejected.")
    pairs, problems = [], []
    for number, row in problems_of(path, problems):
        try:
            pairs.append(_pair(row, path.name))
        except ValueError as exc:
            problems.append(Problem(str(path), str(exc).rstrip(".") + ".", "Correct or delete that line.", number))
    return pairs, problems


def _pair(row: Any, source: str) -> LabelledPair:
    if not isinstance(row, dict):
        raise ValueError("A line must be a JSON object")
    missing = [f for f in PAIR_FIELDS if not isinstance(row.get(f), str) or not row[f].strip()]
    if missing:
        raise ValueError(f"Missing or empty text field(s): {', '.join(missing)}")
    return LabelledPair(*(row[f] for f in PAIR_FIELDS), source=source)


def sample_pairs(pairs: list[LabelledPair], limit: int | None, seed: int) -> list[LabelledPair]:
    """At most ``limit`` pairs, the same ones for the same seed, in file order."""
    if limit is None or limit >= len(pairs):
        return list(pairs)
    keep = set(random.Random(seed).sample(range(len(pairs)), limit))
    return [p for i, p in enumerate(pairs) if i in keep]


def chosen_sides(n: int, seed: int) -> list[Literal["a", "b"]]:
    """Where each of ``n`` pairs shows the human-chosen answer (A or B), by a seeded coin: every judge measured
    with one seed sees the same sides."""
    rng = random.Random(seed)
    return ["a" if rng.random() < 0.5 else "b" for _ in range(n)]


async def calibrate(judge: LLMJudge, pairs: list[LabelledPair], seed: int = 0, concurrency: int = 8,
                    done: Callable[[Outcome], None] | None = None, mode: str = "pairwise") -> list[Outcome]:
    """Ask the judge about every pair, the human-chosen answer placed as A or B by a seeded coin; ``mode`` group
    asks the group ranker (both answers with the question's checklist) instead of the pairwise prompt."""
    sides = chosen_sides(len(pairs), seed)

    async def one(pair: LabelledPair, side: Literal["a", "b"]) -> Outcome:
        a, b = (pair.chosen, pair.rejected) if side == "a" else (pair.rejected, pair.chosen)
        started = time.monotonic()
        ask = judge.compare_ranked if mode == "group" else judge.compare
        outcome = Outcome(pair, side, await ask(pair.prompt, a, b), time.monotonic() - started)
        if done:
            done(outcome)
        return outcome

    return await at_most(concurrency, (one(p, s) for p, s in zip(pairs, sides, strict=True)))


def agreement(outcomes: list[Outcome]) -> dict[str, Any]:
    """Agreement with the human labels: over decided pairs, ties as half, and a 95% Wilson interval."""
    n = len(outcomes)
    agree = sum(o.verdict == "agree" for o in outcomes)
    ties = sum(o.verdict == "tie" for o in outcomes)
    decided = n - ties
    low, high = wilson(agree, decided)
    return {
        "n": n, "agree": agree, "disagree": decided - agree, "ties": ties,
        "agreement": agree / decided if decided else None, "ci95": [low, high] if decided else None,
        "tie_rate": ties / n if n else None, "agreement_ties_half": (agree + ties / 2) / n if n else None,
        "mean_p_chosen": sum(o.p_chosen for o in outcomes) / n if n else None,
        "logprobs": sum(o.preference.source == "logprobs" for o in outcomes),
        "failed": sum(o.preference.source == "none" for o in outcomes),
        "mean_seconds": sum(o.seconds for o in outcomes) / n if n else None,
    }


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (sound for small n and for 0 or n successes)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def report(outcomes: list[Outcome]) -> dict[str, Any]:
    """Agreement over everything, per file and, within each file, per category."""
    files: dict[str, list[Outcome]] = {}
    for o in outcomes:
        files.setdefault(o.pair.source, []).append(o)
    return {"all": agreement(outcomes), "files": {name: {**agreement(group), "categories": _by_category(group)}
                                                  for name, group in files.items()}}


def _by_category(outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault(o.pair.category, []).append(o)
    return {name: agreement(group) for name, group in sorted(groups.items())}
