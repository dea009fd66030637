"""The critic: a score in 0..1 for every rollout of a round, from verifiable checks (graders, tool errors, the
step budget) or, where no gold answer is used, self-consistency; and, when ``critic.judge_weight`` is above 0, the
LLM judge's preference between episodes of one prompt that the checks leave tied."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from strop.config import Settings
from strop.errors import StropError
from strop.files import write_atomic
from strop.scenarios.graders import Contains
from strop.scenarios.suite import Case, Suite, load_suite
from strop.serving.endpoint import Endpoint
from strop.training.consistency import Consensus, consensus, episode_of, search_texts, searched
from strop.training.pairs import Outcome, clearly_better
from strop.training.sources import Prompt, normal
from strop.trajectories import Trajectory, TrajectoryStore

CRITIC_VERSION = "verifiable-1"
# The critic settings a round's scores depend on, recorded with its first scores: a round resumed under other ones
# would train on two critics' scores mixed. (The judge only breaks ties, applied when the scores are read.)
SCORED_BY = ("use_gold", "min_vote_share", "grounding_overlap", "memory_vote", "call_vote")
SETTINGS_FILE = "critic-settings.json"
FILES = ("scores.jsonl", "consensus.jsonl", "judged.jsonl", SETTINGS_FILE)  # what scoring a round writes in its folder


class Critic:
    """Scores a round's rollouts into ``scores.jsonl`` (and ``judged.jsonl``), one line at a time, so a killed
    critic resumes where it stopped."""

    def __init__(self, settings: Settings, endpoint: Endpoint, store: TrajectoryStore,
                 suite: Callable[[str], Suite] = load_suite):
        self.settings, self.endpoint, self.store = settings, endpoint, store
        self.suite = suite  # a suite by name (the round passes its own, loaded once)

    @property
    def version(self) -> str:
        weight = self.settings.critic.judge_weight
        base = CRITIC_VERSION if self.settings.critic.use_gold else f"{CRITIC_VERSION}+label-free"
        return f"{base}+judge-{weight:g}" if weight > 0 else base

    def run(self, rnd, prompts: dict[str, Prompt]) -> dict[str, Any]:
        """Score every rollout not scored yet (a prompt's episodes together), then judge ties if the judge counts.

        Suite prompts are scored by their graders unless ``critic.use_gold`` is off; every other prompt (and
        then every prompt) by self-consistency with grounding, whose verdict goes to ``consensus.jsonl``.
        """
        self.score(rnd, prompts)
        judged = 0
        if self.settings.critic.judge_weight > 0:
            group = self.settings.critic.judge_mode == "group"
            judged = self.rank_ties(rnd, prompts) if group else self.judge_ties(rnd, prompts)
        scores = [s["score"] for s in self.scores(rnd) if s["score"] is not None]
        return {"scored": len(scores), "mean_score": sum(scores) / len(scores) if scores else None,
                "judged_prompts": judged, "critic": self.version, "groups": group_counts(rnd)}

    def score(self, rnd, prompts: dict[str, Prompt]) -> None:
        """The verifiable (or self-consistency) scores of the rollouts not scored yet, without the judge."""
        lines = rnd.lines("scores.jsonl")
        self.same_settings(rnd, scored_before=bool(lines))
        scored = {r["trajectory"] for r in lines}
        decided = {r["prompt"] for r in rnd.lines("consensus.jsonl")}
        for prompt_id, records in groups_of(rnd.lines("rollouts.jsonl")).items():
            todo = [r for r in records if r.get("trajectory") and r["trajectory"] not in scored]
            if not todo and prompt_id in decided:
                continue
            prompt = prompts[prompt_id]
            if self.label_free(prompt):
                rows = self.consensus_rows(rnd, prompt, records, record_verdict=prompt_id not in decided)
            else:
                rows = [self.gold_row(prompt, r) for r in todo]
            new = {r["trajectory"] for r in todo}
            for row in rows:
                if row["trajectory"] in new:
                    rnd.append("scores.jsonl", row)

    def same_settings(self, rnd, scored_before: bool) -> None:
        """Record the settings the round's scores are made with; refuse to add scores made with other ones."""
        now = {name: getattr(self.settings.critic, name) for name in SCORED_BY}
        path = rnd.dir / SETTINGS_FILE
        if not scored_before or not path.exists():  # a round scored before the record existed: from now on
            write_atomic(path, json.dumps(now) + "\n")
            return
        before = json.loads(path.read_text())
        changed = [f"critic.{name} = {before.get(name)!r} (now {value!r})" for name, value in now.items()
                   if before.get(name) != value]
        if changed:
            raise StropError(f"{rnd.dir}: its rollouts were scored with {'; '.join(changed)}.",
                             fix=f"Resume with those settings, or remove {', '.join(FILES[:-1])} and {FILES[-1]} "
                                 "from that folder to score every rollout again.")

    def label_free(self, prompt: Prompt) -> bool:
        return prompt.source != "suite" or not self.settings.critic.use_gold

    def gold_row(self, prompt: Prompt, record: dict[str, Any]) -> dict[str, Any]:
        score, why = score_episode(record, self.store.get(record["trajectory"]))
        row = {"prompt": prompt.id, "trajectory": record["trajectory"], "score": score, "why": why,
               "critic": self.version}
        return row if score is None else {**row, "passed": bool(record.get("passed"))}

    def consensus_rows(self, rnd, prompt: Prompt, records: list[dict[str, Any]], record_verdict: bool = True
                       ) -> list[dict[str, Any]]:
        """The self-consistency scores of one prompt's episodes (grader results are never read)."""
        verdict = self.consensus_of(prompt, records)
        if record_verdict:
            rnd.append("consensus.jsonl", {"prompt": prompt.id, "verdict": verdict.verdict, "share": verdict.share,
                                           "answer": verdict.answer, "votes": verdict.votes})
        return [{"prompt": prompt.id, "trajectory": t, "score": s, "why": verdict.why(t), "critic": self.version}
                for t, s in verdict.scores.items() if t]

    def consensus_of(self, prompt: Prompt, records: list[dict[str, Any]], memory: bool | None = None) -> Consensus:
        """The vote of one prompt's episodes; ``memory`` says whether it is a memory question (None: find out)."""
        critic = self.settings.critic
        trajectories = {r["trajectory"]: self.store.get(r["trajectory"]) for r in records if r.get("trajectory")}
        if memory is None:
            memory = self.memory_question(prompt, trajectories.values())
        episodes = [episode_of(trajectories.get(r.get("trajectory") or ""), r.get("trajectory") or "",
                               failed=r.get("status") in ("error", "timeout"),
                               declared=[f.get("name", "") for f in prompt.functions], memory=memory,
                               overlap=critic.grounding_overlap, memory_vote=critic.memory_vote,
                               call_vote=critic.call_vote) for r in records]
        return consensus(episodes, critic.min_vote_share)

    def memory_question(self, prompt: Prompt, trajectories) -> bool:
        """Answered from memory: a question written from a passage, a case of a suite with a memory corpus, or
        a chat question some episode searched memory for."""
        if prompt.source == "synthetic":
            return True
        if prompt.source == "suite" and prompt.suite:
            return self.suite(prompt.suite).defaults.memory is not None
        return any(searched(t) for t in trajectories)

    def judge_ties(self, rnd, prompts: dict[str, Prompt]) -> int:
        """Ask the pairwise judge about episodes of one prompt that the verifiable checks leave tied.

        One line per prompt in ``judged.jsonl`` (each episode's mean preference over its comparisons),
        so a killed critic resumes at the next prompt.
        """
        async def one(judge, slots, prompt_id: str, episodes: list[tuple[str, str, float]]) -> None:
            async def compare(question: str, a: str, b: str) -> float:
                async with slots:
                    return (await judge.compare(question, a, b)).p_a

            preferences = await judged_preferences(prompts[prompt_id].input, episodes, compare,
                                                   self.settings.improve.min_margin)
            rnd.append("judged.jsonl", {"prompt": prompt_id, "preference": preferences})

        return self.judge_groups(rnd, one)

    def rank_ties(self, rnd, prompts: dict[str, Prompt]) -> int:
        """Show the judge, per prompt, the episodes the checks above leave tied (scores within
        ``improve.min_margin``, different answers) with a checklist derived from the question; one line per prompt
        in ``judged.jsonl`` with each episode's preference (0.5: picked as often as chance)."""
        from strop.scenarios.judge import checklist

        critic = self.settings.critic

        async def one(judge, slots, prompt_id: str, episodes: list[tuple[str, str, float]]) -> None:
            prompt, preference = prompts[prompt_id], {}
            items = checklist(prompt.input, [f.get("name", "") for f in prompt.functions],
                              memory=prompt.source == "synthetic")
            for tied in tied_sets(episodes, self.settings.improve.min_margin):
                async with slots:
                    preference |= await ranked_preferences(judge, prompt.input, tied, items, critic.judge_orders)
            rnd.append("judged.jsonl", {"prompt": prompt_id, "preference": preference})

        return self.judge_groups(rnd, one)

    def judge_groups(self, rnd, one: Callable[..., Any]) -> int:
        """Run ``one(judge, slots, prompt id, episodes)`` for every prompt not judged yet, its scored episodes as
        ``(trajectory, answer, score)``; judge calls of all prompts share ``improve.concurrency`` slots."""
        from strop.scenarios.judge import LLMJudge
        from strop.serving.endpoint import judge_endpoint

        done = {row["prompt"] for row in rnd.lines("judged.jsonl")}
        groups: dict[str, list[tuple[str, str, float]]] = {}
        for row in rnd.lines("scores.jsonl"):
            if row["score"] is not None and row["prompt"] not in done:
                answer = self.store.get(row["trajectory"]).answer or "(no answer)"
                groups.setdefault(row["prompt"], []).append((row["trajectory"], answer, row["score"]))
        judge = self.reward_model() if self.settings.critic.judge_mode == "reward" else LLMJudge(
            judge_endpoint(self.settings, self.endpoint), self.settings.critic, prompts_dir=self.settings.prompts_dir)
        slots = asyncio.Semaphore(self.settings.improve.concurrency)

        async def all_of_them() -> None:
            try:
                await asyncio.gather(*(one(judge, slots, p, episodes) for p, episodes in groups.items()))
            finally:
                await judge.close()

        asyncio.run(all_of_them())
        return len(rnd.lines("judged.jsonl"))

    def reward_model(self):
        from strop.serving.merge import base_model_dir
        from strop.training.reward_model import RewardModel, reward_model_dir

        return RewardModel(reward_model_dir(self.settings), base_model_dir(self.settings),
                           self.settings.critic.tie_margin, self.settings.train.threads, self.settings.train.bf16)

    def scores(self, rnd) -> list[dict[str, Any]]:
        """The scores: verifiable, moved by ``critic.judge_weight`` times the judge's preference."""
        weight = self.settings.critic.judge_weight
        preference = {t: p for row in rnd.lines("judged.jsonl") for t, p in row["preference"].items()}
        rows = rnd.lines("scores.jsonl")
        for row in rows:
            if row["score"] is not None and row["trajectory"] in preference:
                judged = row["score"] + weight * (preference[row["trajectory"]] - 0.5)
                row["score"] = max(0.0, min(1.0, judged))
        return rows


def groups_of(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rollout records by prompt, in order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["prompt"], []).append(record)
    return groups


def informative(rnd, min_margin: float, pass_over_fail: bool = False) -> set[str]:
    """The prompts a pair can come of: their best-scored episode is clearly better than another
    (:func:`~strop.training.pairs.clearly_better`)."""
    outcomes: dict[str, list[Outcome]] = {}
    for row in rnd.lines("scores.jsonl"):
        if row["score"] is not None:
            outcomes.setdefault(row["prompt"], []).append((row["score"], row.get("passed")))
    best = {prompt: max(group, key=lambda o: o[0]) for prompt, group in outcomes.items()}
    return {prompt for prompt, group in outcomes.items()
            if any(clearly_better(best[prompt], other, min_margin, pass_over_fail) for other in group)}


def group_counts(rnd) -> dict[str, int]:
    """How the round's prompts fared: scored groups whose episodes all scored alike (no pair can come of them:
    all passed, all failed, or the vote gave no preference), those that disagree, and those where nothing ran;
    and the self-consistency verdicts."""
    scores: dict[str, list[float | None]] = {}
    for row in rnd.lines("scores.jsonl"):
        scores.setdefault(row["prompt"], []).append(row["score"])
    counts = {"disagree": 0, "all_alike": 0, "all_errored": 0}
    for values in scores.values():
        ran = [v for v in values if v is not None]
        counts["all_errored" if not ran else "all_alike" if max(ran) == min(ran) else "disagree"] += 1
    for row in rnd.lines("consensus.jsonl"):
        counts[f"vote_{row['verdict']}"] = counts.get(f"vote_{row['verdict']}", 0) + 1
    return counts


def score_episode(record: dict[str, Any], trajectory: Trajectory) -> tuple[float | None, list[str]]:
    """The graders' score of one episode of a suite case in 0..1, less penalties for invalid actions, tool errors
    and a run out of budget, and why; None for episodes that failed to run. (Prompts with no graders, or rounds on
    AI feedback alone, are scored by self-consistency instead: :mod:`strop.training.consistency`.)"""
    if record.get("status") in ("error", "timeout") or trajectory.status == "error":
        return None, ["the episode failed to run"]
    grades = record.get("grades") or []
    score = 1.0 if record.get("passed") else sum(g["score"] for g in grades) / max(1, len(grades))
    why = ["graders passed" if record.get("passed") else f"graders failed (partial credit {score:.2f})"]
    invalid = sum(m["role"] == "tool" and m.get("name") == "invalid_action" for m in trajectory.messages)
    errors = sum(1 for s in trajectory.steps if s.kind == "tool" and s.error and s.name != "invalid_action")
    penalty = 0.1 * invalid + 0.05 * errors + (0.25 if trajectory.status == "budget_exhausted" else 0.0)
    if penalty:
        why.append(f"-{penalty:.2f}: {invalid} invalid actions, {errors} tool errors, status {trajectory.status}")
    return max(0.0, min(1.0, score - penalty)), why


def found_answer(case: Case, trajectory: Trajectory) -> bool | None:
    """Whether the episode's memory searches returned a passage holding an answer the case's graders accept (None:
    the case checks no text in its answer, so there is nothing to look for)."""
    wanted = [g for g in case.graders if isinstance(g, Contains)]
    if not wanted:
        return None
    results = "\n".join(search_texts(trajectory))
    return any(g.holds(results) for g in wanted)


def tied_sets(episodes: list[tuple[str, str, float]], min_margin: float) -> list[list[tuple[str, str, float]]]:
    """Episodes the checks cannot tell apart: runs of scores within ``min_margin`` of the run's best, each with at
    least two different answers."""
    ranked, sets = sorted(episodes, key=lambda e: e[2], reverse=True), []
    while ranked:
        tied = [e for e in ranked if ranked[0][2] - e[2] < min_margin]
        ranked = ranked[len(tied):]
        if len({normal(e[1]) for e in tied}) > 1:
            sets.append(tied)
    return sets


async def ranked_preferences(judge, question: str, tied: list[tuple[str, str, float]], items: list[str],
                             orders: int) -> dict[str, float]:
    """Each tied episode's preference from one ranking of their distinct answers (at most the judge's limit)."""
    from strop.scenarios.judge import MAX_RANKED

    answers = list(dict.fromkeys(normal(e[1]) for e in tied))[:MAX_RANKED]
    shown = {normal(e[1]): e[1] for e in tied}
    ranking = await judge.rank(question, [shown[a] for a in answers], items, orders)
    return {t: ranking.preference(answers.index(normal(a))) for t, a, _ in tied if normal(a) in answers}


async def judged_preferences(question: str, episodes: list[tuple[str, str, float]],
                             compare: Callable[[str, str, str], Any], min_margin: float) -> dict[str, float]:
    """Each episode's mean preference (0..1, 0.5 neutral) from pairwise comparisons with the episodes of the
    same prompt whose verifiable scores are within ``min_margin`` of its own and whose answers differ."""
    pairs = [(a, b) for i, a in enumerate(episodes) for b in episodes[i + 1:]
             if abs(a[2] - b[2]) < min_margin and normal(a[1]) != normal(b[1])]
    won: dict[str, list[float]] = {}
    for (a, b), p_a in zip(pairs, await asyncio.gather(*(compare(question, a[1], b[1]) for a, b in pairs)),
                           strict=True):
        won.setdefault(a[0], []).append(p_a)
        won.setdefault(b[0], []).append(1.0 - p_a)
    return {trajectory: sum(ps) / len(ps) for trajectory, ps in won.items()}
