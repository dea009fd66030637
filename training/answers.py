"""Pairs at the answer step of a memory question: the plain call over the passages, asked again.

A memory answer is one greedy call over the passages the search found, so two episodes that searched alike answer
alike, and a rag pair is always at the query: the answer step never gets a pair of its own, though most of the
answers it misses are in the passages it read. With ``improve.answer_samples`` above 0 the critic stage asks each
such call of a gold-graded prompt again that many times at the rollout temperature (``answers.jsonl``, one line
per episode, appended as they finish, so a stopped stage resumes), and the pairs stage grades the greedy reply and
the samples with the case's own graders: per prompt, a passing reply against a failing one to the same messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from strop.agents.graph import ANSWER_FREQUENCY_PENALTY, ANSWER_MAX_TOKENS
from strop.aio import at_most
from strop.scenarios.graders import Contains
from strop.serving.endpoint import Endpoint
from strop.training.pairs import text_pair
from strop.trajectories import Trajectory

ANSWERS = "answers.jsonl"


def sample_answers(rnd, episodes: list[tuple[str, Trajectory]], endpoint: Endpoint, adapter: str | None,
                   samples: int, temperature: float, concurrency: int) -> int:
    """Ask the answer call of each (prompt id, trajectory) not yet in ``answers.jsonl`` again ``samples`` times;
    returns how many calls were asked."""
    done = {line["trajectory"] for line in rnd.lines(ANSWERS)}
    todo = [(p, t) for p, t in episodes if t.answered_from and t.id not in done]
    if not todo:
        return 0
    body = {"model": endpoint.model_for(adapter), "n": samples, "temperature": temperature,
            "max_tokens": ANSWER_MAX_TOKENS, "frequency_penalty": ANSWER_FREQUENCY_PENALTY}

    async def all_of_them() -> None:
        headers = {"Authorization": f"Bearer {endpoint.api_key}"}
        async with httpx.AsyncClient(base_url=endpoint.base_url, headers=headers, timeout=600) as client:
            async def one(prompt: str, trajectory: Trajectory) -> None:
                made = trajectory.answered_from
                reply = await client.post("/chat/completions", json={**body, "messages": made["prompt"]})
                reply.raise_for_status()
                replies = [str(c["message"]["content"] or "") for c in reply.json()["choices"]]
                rnd.append(ANSWERS, {"prompt": prompt, "trajectory": trajectory.id, "messages": made["prompt"],
                                     "greedy": made["reply"], "samples": replies})

            await at_most(concurrency, (one(p, t) for p, t in todo))

    asyncio.run(all_of_them())
    return len(todo)


def answer_pairs(lines: list[dict[str, Any]], grader: Callable[[str], Contains | None],
                 critic: str) -> list[dict[str, Any]]:
    """One pair per prompt from its asked-again answer calls (by trajectory id, the first call with a passing and a
    failing reply): the passing reply chosen (the greedy one where it passed), a failing one rejected (likewise).
    ``grader`` gives a prompt's gold grader, or None where the prompt's gold answers are not to be read."""
    pairs: dict[str, dict[str, Any]] = {}
    for line in sorted(lines, key=lambda row: row["trajectory"]):
        wanted = grader(line["prompt"])
        if wanted is None or line["prompt"] in pairs:
            continue
        replies = [line["greedy"], *line["samples"]]
        passing = [r for r in replies if wanted.holds(r)]
        failing = [r for r in replies if not wanted.holds(r)]
        if passing and failing:
            pairs[line["prompt"]] = text_pair(line["messages"], passing[0], failing[0], {
                "chosen_trajectory": line["trajectory"], "rejected_trajectory": line["trajectory"],
                "chosen_score": 1.0, "rejected_score": 0.0, "critic": critic, "source": "answer-samples"})
    return list(pairs.values())
