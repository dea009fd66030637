"""The label-free critic measured against the gold graders: `strop critic calibrate --against-gold SUITE...`.

K episodes are sampled per train-split case (real model, rollout temperature), the critic makes its preference
pairs with the graders hidden (``critic.use_gold = false``), and then the graders say whether each pair's
chosen episode is the better one. Per suite this gives the pair accuracy (with a 95% Wilson interval) and the
coverage (the share of cases that gave any pair). The accuracy is over the pairs the graders can order: a pair
whose episodes both pass (or both fail with the same partial credit) is a grader tie, counted apart. Episodes
are kept in a JSON-lines file per suite and temperature, so a rerun (or another critic setting) reuses them
instead of sampling again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from strop.aio import at_most
from strop.config import Settings
from strop.files import append_line, read_lines
from strop.scenarios.judge import wilson
from strop.scenarios.runner import Evaluator
from strop.scenarios.suite import Case, Suite
from strop.serving.endpoint import Endpoint
from strop.training.consistency import VERDICTS
from strop.training.critic import Critic
from strop.training.pairs import Scored, build_pairs
from strop.training.sources import Prompt, prompt_id
from strop.trajectories import TrajectoryStore

FAILED = ("error", "timeout")
Progress = Callable[[str, int, int], None]  # (suite, episodes done, episodes in all)


def train_cases(suite: Suite, limit: int, seed: int) -> list[Case]:
    """At most ``limit`` train-split cases of ``suite``, the same ones for the same seed."""
    train = suite.select("train")
    return random.Random(seed).sample(train, min(limit, len(train)))


def episodes_file(settings: Settings, suite: str, temperature: float) -> Path:
    return settings.state_dir / "calibrate" / f"{suite}-t{temperature:g}.jsonl"


def sample_episodes(settings: Settings, endpoint: Callable[[], Endpoint], store: TrajectoryStore, suite: Suite,
                    cases: list[Case], samples: int, temperature: float, progress: Progress | None = None
                    ) -> list[dict[str, Any]]:
    """``samples`` episodes of each case at ``temperature``; those already in the suite's episodes file are reused,
    except ones that failed to run (a server that went away), which are sampled again. ``endpoint()`` is asked for
    only when some episode is left to sample, so scoring kept episodes again starts no server."""
    path = episodes_file(settings, suite.name, temperature)
    wanted = {(c.id, k) for c in cases for k in range(samples)}
    done = {(r["case"], r["repeat"]) for r in read_lines(path) if r.get("status") not in FAILED} & wanted
    finished = len(done)

    async def one(case: Case, k: int) -> None:
        nonlocal finished
        try:
            record = await evaluator.episode(suite, case, k)
        except Exception as exc:  # one broken episode is an errored vote, not the end of the measurement
            record = {"case": case.id, "repeat": k, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
        append_line(path, record)
        finished += 1
        if progress:
            progress(suite.name, finished, len(wanted))

    todo = [(c, k) for c in cases for k in range(samples) if (c.id, k) not in done]
    if todo:
        with Evaluator(settings, endpoint(), store=store, label="calibrate",
                       sampling=settings.sampling.model_copy(update={"temperature": temperature})) as evaluator:
            evaluator.prepare(suite)  # a memory suite answers from its corpus
            asyncio.run(at_most(settings.improve.concurrency, (one(c, k) for c, k in todo)))
    latest = {(r["case"], r["repeat"]): r for r in read_lines(path)}  # a record sampled again comes later
    return [r for key, r in latest.items() if key in wanted]


def gold_score(record: dict[str, Any]) -> float:
    """What the graders say of an episode: 1 if it passed, else their mean partial credit."""
    if record.get("passed"):
        return 1.0
    grades = record.get("grades") or []
    return sum(g["score"] for g in grades) / len(grades) if grades else 0.0


def measure(settings: Settings, store: TrajectoryStore, suite: Suite, cases: list[Case],
            records: list[dict[str, Any]]) -> dict[str, Any]:
    """Pairs the label-free critic makes from ``records`` and how often the graders agree with them."""
    label_free = settings.model_copy(update={"critic": settings.critic.model_copy(update={"use_gold": False})})
    critic = Critic(label_free, None, store)
    by_case: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_case.setdefault(record["case"], []).append(record)
    gold = {r["trajectory"]: gold_score(r) for r in records if r.get("trajectory")}
    verdicts = dict.fromkeys(VERDICTS, 0)
    pairs, covered, agree, ties, strict, gold_mixed = [], 0, 0, 0, 0, 0
    for case in cases:
        group = by_case.get(case.id, [])
        prompt = Prompt(prompt_id(suite.name, case.id), "suite", case.input, suite=suite.name, case=case.id,
                        functions=list(case.functions))
        verdict = critic.consensus_of(prompt, group, memory=suite.defaults.memory is not None)
        verdicts[verdict.verdict] += 1
        passes = {r.get("passed", False) for r in group if r.get("trajectory")}
        gold_mixed += len(passes) == 2
        scored = [Scored(store.get(t), s, _as_shown) for t, s in verdict.scores.items() if t and s is not None]
        made, _ = build_pairs([scored], settings.improve.min_margin, critic.version, settings.improve.pairs_per_prompt)
        covered += bool(made)
        for pair in made:
            chosen, rejected = (gold[pair["provenance"][f"{side}_trajectory"]] for side in ("chosen", "rejected"))
            agree += chosen > rejected
            ties += chosen == rejected
            strict += chosen == 1.0 and rejected < 1.0
            pairs.append({"case": case.id, "chosen": pair["provenance"]["chosen_trajectory"],
                          "rejected": pair["provenance"]["rejected_trajectory"], "chosen_gold": chosen,
                          "rejected_gold": rejected, "verdict": verdict.verdict, "share": verdict.share})
    ordered = len(pairs) - ties  # pairs whose two episodes the graders score differently
    low, high = wilson(agree, ordered)
    ran = [r for r in records if r.get("trajectory")]
    return {"suite": suite.name, "cases": len(cases), "episodes": len(records), "pairs": len(pairs),
            "agree": agree, "disagree": ordered - agree, "gold_ties": ties,
            "pair_accuracy": agree / ordered if ordered else None, "ci95": [low, high] if ordered else None,
            "agree_share": agree / len(pairs) if pairs else None,
            "strict_accuracy": strict / len(pairs) if pairs else None,
            "covered": covered, "coverage": covered / len(cases) if cases else None,
            "cov_ci95": list(wilson(covered, len(cases))),
            "pass_rate": sum(bool(r.get("passed")) for r in ran) / len(ran) if ran else None,
            "gold_mixed": gold_mixed, "verdicts": verdicts, "pair_list": pairs}


def _as_shown(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return history  # only the pair's provenance is read here, not its prompt


def against_gold(settings: Settings, endpoint: Callable[[], Endpoint], suites: list[Suite], limit: int,
                 samples: int, temperature: float, seed: int = 0, progress: Progress | None = None) -> dict[str, Any]:
    """The label-free critic's pair accuracy and coverage on the train split of each suite (``endpoint()``: the
    model server, asked for when episodes are left to sample)."""
    store = TrajectoryStore(settings.trajectories_path)
    figures = []
    for suite in suites:
        cases = train_cases(suite, limit, seed)
        records = sample_episodes(settings, endpoint, store, suite, cases, samples, temperature, progress)
        figures.append(measure(settings, store, suite, cases, records))
    return {"temperature": temperature, "samples": samples, "limit": limit, "seed": seed,
            "min_vote_share": settings.critic.min_vote_share, "min_margin": settings.improve.min_margin,
            "pairs_per_prompt": settings.improve.pairs_per_prompt,
            "grounding_overlap": settings.critic.grounding_overlap, "suites": figures}
