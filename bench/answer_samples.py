"""How much a rag answer step could learn from its own samples: a round's rag episodes answered from the passages
their search found, that answer call asked again ``--samples`` times at ``--temperature`` on the state's running
server, each reply graded by the case's own graders.

Today a rag pair is always at the query (the answer call is greedy, so two episodes that searched alike answer
alike): the answer step never gets a pair. Where replies to the same passages pass and fail, a pair at the answer
step could be made. Counts the episodes by (the search found an accepted answer, the greedy reply passed, some
sample passed, every sample passed).

    STROP_STATE_DIR=STATE .venv/bin/python -m strop serve start   # the policy the round rolled out with
    STROP_STATE_DIR=STATE .venv/bin/python bench/answer_samples.py --round 1 --name base
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from strop.config import load_settings
from strop.scenarios.graders import Contains
from strop.scenarios.suite import load_suite
from strop.serving.endpoint import connect
from strop.training.critic import found_answer
from strop.trajectories import Trajectory, TrajectoryStore

RESULTS = Path(__file__).parent / "results"


def episodes(state: Path, round_number: int, suite_name: str) -> list[tuple[dict, Trajectory, Contains, bool | None]]:
    """The round's episodes of the suite whose answer a plain call over the passages made, with their case's grader
    and whether their search found an accepted answer."""
    suite = load_suite(suite_name)
    graders = {c.id: next(g for g in c.graders if isinstance(g, Contains)) for c in suite.cases
               if any(isinstance(g, Contains) for g in c.graders)}
    cases = {c.id: c for c in suite.cases}
    store = TrajectoryStore(load_settings().trajectories_path)
    rollouts = state / "improve" / f"round-{round_number:04d}" / "rollouts.jsonl"
    found = []
    for record in map(json.loads, rollouts.read_text().splitlines()):
        if record.get("suite") != suite.name or not record.get("trajectory") or record["case"] not in graders:
            continue
        trajectory = store.get(record["trajectory"])
        if trajectory.answered_from:
            found.append((record, trajectory, graders[record["case"]], found_answer(cases[record["case"]], trajectory)))
    return found


async def sample(todo: list, samples: int, temperature: float, concurrency: int) -> list[list[str]]:
    endpoint = connect(load_settings())
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600, headers={"Authorization": f"Bearer {endpoint.api_key}"}) as client:
        async def one(trajectory) -> list[str]:
            async with slots:
                reply = await client.post(f"{endpoint.base_url}/chat/completions", json={
                    "model": endpoint.model, "messages": trajectory.answered_from["prompt"], "n": samples,
                    "temperature": temperature, "max_tokens": 64})
                reply.raise_for_status()
                return [choice["message"]["content"] or "" for choice in reply.json()["choices"]]
        return await asyncio.gather(*(one(trajectory) for _, trajectory, _, _ in todo))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--round", type=int, required=True)
    parser.add_argument("--name", required=True, help="names the JSON: bench/results/answer-samples-NAME.json")
    parser.add_argument("--suite", default="rag")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    settings = load_settings()
    state = settings.state_dir.resolve()
    todo = episodes(state, args.round, args.suite)
    replies = asyncio.run(sample(todo, args.samples, args.temperature, args.concurrency))
    counts: collections.Counter = collections.Counter()
    with_pair, prompts_with_pair = 0, set()
    for (record, trajectory, grader, found), sampled in zip(todo, replies, strict=True):
        greedy = grader.holds(trajectory.answered_from["reply"])
        passed = [grader.holds(text) for text in sampled]
        counts[(bool(found), greedy, any(passed), all(passed))] += 1
        if len({greedy, *passed}) > 1:  # a passing and a failing reply to the same passages
            with_pair += 1
            prompts_with_pair.add(record["prompt"])
    rows = [{"search_found": k[0], "greedy_passed": k[1], "some_sample_passed": k[2], "every_sample_passed": k[3],
             "episodes": v} for k, v in sorted(counts.items())]
    figures = {"state": str(state), "round": args.round, "suite": args.suite, "samples": args.samples,
               "temperature": args.temperature, "episodes": len(todo), "rows": rows,
               "episodes_with_an_answer_pair": with_pair, "prompts_with_an_answer_pair": len(prompts_with_pair),
               "prompts": len({record["prompt"] for record, *_ in todo})}
    table = Table(title=f"{args.suite} round {args.round}: the answer call again, {args.samples} samples at "
                        f"T={args.temperature}")
    for column in ("search found", "greedy passed", "some sample passed", "every sample passed", "episodes"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(*(str(r[k]) for k in ("search_found", "greedy_passed", "some_sample_passed",
                                              "every_sample_passed", "episodes")))
    console = Console()
    console.print(table)
    console.print(f"an answer-step pair possible in {with_pair} of {len(todo)} episodes, "
                  f"{len(prompts_with_pair)} of {figures['prompts']} prompts")
    path = RESULTS / f"answer-samples-{args.name}.json"
    path.write_text(json.dumps(figures, indent=1))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
