"""Where a rag episode loses the answer before its answer step: a round's rag rollouts, each episode's first memory
search replayed on the state's memory as strop runs it and three other ways, counting the episodes whose three
sentences the answer call reads (``grounding.focus``) hold an answer the case's graders accept.

The ways: the model's query with passages cut as the model is shown them (``toolkit.PASSAGE_CHARS``) - what strop
runs; the same with passages whole; the search run on the question followed by the model's query (an expansion in
the manner of query2doc, clipped to the query bound); both. Also how many cases the question alone finds a passage
for. Reads only what the round saved; no model call.

    STROP_STATE_DIR=STATE .venv/bin/python bench/retrieval.py --round 1
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from strop.agents.graph import SEARCH
from strop.agents.grounding import Passage, focus
from strop.config import load_settings
from strop.memory.core import Memory
from strop.memory.schema import SearchFilter
from strop.scenarios.graders import Contains
from strop.scenarios.runner import namespace, outcome_of
from strop.scenarios.suite import load_suite
from strop.tools.toolkit import MAX_QUERY, PASSAGE_CHARS
from strop.trajectories import Trajectory, TrajectoryStore

RESULTS = Path(__file__).parent / "results" / "retrieval.json"
WAYS = {"as run": (False, False), "passages whole": (False, True), "question + query": (True, False),
        "both": (True, True)}


def first_query(trajectory: Trajectory, question: str) -> str:
    """The query of the episode's first memory search as strop ran it (the question where it searched none)."""
    return next((args.get("query", question) for name, args in outcome_of(trajectory).calls if name == SEARCH),
                question)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--suite", default="rag")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings = load_settings()
    suite = load_suite(args.suite)
    cases = {c.id: c for c in suite.cases}
    store, memory = TrajectoryStore(settings.trajectories_path), Memory(settings)
    where = SearchFilter(namespace=namespace(suite))
    rollouts = settings.improve_dir / f"round-{args.round:04d}" / "rollouts.jsonl"
    records = [r for r in map(json.loads, rollouts.read_text().splitlines())
               if r["suite"] == suite.name and r.get("trajectory")]

    def holds(case, passages: list[Passage]) -> bool:
        text = "\n".join(p.text for p in passages)
        return any(g.holds(text) for g in case.graders if isinstance(g, Contains))

    def search(query: str) -> list[Passage]:
        return [Passage(h.id[:8], h.score, " ".join(h.payload.get("text", "").split()))
                for h in memory.search(query, k=settings.agent.memory_k, where=where)]

    counts: collections.Counter[str] = collections.Counter()
    for record in records:
        case = cases[record["case"]]
        query = first_query(store.get(record["trajectory"]), case.input)
        for way, (expanded, whole) in WAYS.items():
            found = search(f"{case.input} {query}"[:MAX_QUERY] if expanded else query)
            shown = found if whole else [Passage(p.id, p.score, p.text[:PASSAGE_CHARS]) for p in found]
            counts[way] += holds(case, focus(shown, case.input))
        counts["passed"] += bool(record.get("passed"))
    seen = {r["case"]: cases[r["case"]] for r in records}
    result = {"round": args.round, "suite": suite.name, "episodes": len(records), "passed": counts["passed"],
              "answer_in_sentences_read": {way: counts[way] for way in WAYS}, "cases": len(seen),
              "question_alone_finds": sum(holds(case, search(case.input)) for case in seen.values())}
    show(result)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    Console().print(f"wrote {args.out}")


def show(result: dict) -> None:
    table = Table(title=f"{result['suite']}, round {result['round']}: {result['episodes']} episodes, "
                        f"{result['passed']} passed")
    table.add_column("first search replayed")
    table.add_column("answer in the sentences read", justify="right")
    for way, count in result["answer_in_sentences_read"].items():
        table.add_row(way, f"{count} ({count / max(1, result['episodes']):.0%})")
    Console().print(table)
    Console().print(f"the question alone finds an accepted answer for {result['question_alone_finds']} of "
                    f"{result['cases']} cases")


if __name__ == "__main__":
    main()
