"""The label-free critic on memory questions no suite case holds, with each way a memory question votes.

The rag suite keeps a sample of its SQuAD questions file; the questions outside that sample, over the same corpus,
become a suite of their own in ``--work`` (split by id the same way). `strop critic calibrate --against-gold` then
samples K episodes of ``--limit`` of its train cases once and scores them with ``critic.memory_vote`` = passage and
= answer (the second reads the first's episodes back), so both votes judge the very same episodes.

    STROP_STATE_DIR=/tmp/unseen .venv/bin/python bench/critic_unseen.py --work /tmp/unseen/suite
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from strop.scenarios.suite import load_suite, resolve, resolve_path

RESULTS = Path(__file__).parent / "results"
VOTES = ("passage", "answer")


def unseen_suite(work: Path, sample: int) -> Path:
    """A copy of the rag suite over the lines of its questions file that its own sample left out."""
    suite = load_suite("rag")
    spec = yaml.safe_load(resolve("rag").read_text(encoding="utf-8"))
    data = spec["data"][0]
    source = resolve_path(suite, data["path"])
    kept = {case.id for case in suite.cases}
    work.mkdir(parents=True, exist_ok=True)
    rest = work / "questions-unseen.jsonl"
    rest.write_text("".join(line for line in source.read_text(encoding="utf-8").splitlines(keepends=True)
                            if str(json.loads(line)["id"]) not in kept), encoding="utf-8")
    spec["data"] = [{**data, "path": str(rest), "sample": sample}]
    path = work / "rag.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def calibrate(suite: Path, vote: str, args: argparse.Namespace) -> dict:
    out = args.work / f"calibrate-{vote}.json"
    subprocess.run([sys.executable, "-m", "strop", "critic", "calibrate", "--against-gold", str(suite),
                    "--limit", str(args.limit), "-k", str(args.samples), "--temperature", str(args.temperature),
                    "--json", str(out)], env={**os.environ, "STROP_CRITIC__MEMORY_VOTE": vote}, check=True)
    return json.loads(out.read_text())["suites"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for the unseen questions' suite.")
    parser.add_argument("--sample", type=int, default=300, help="Unseen questions kept (then split by id).")
    parser.add_argument("--limit", type=int, default=100, help="Train cases sampled.")
    parser.add_argument("--samples", "-k", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "critic-unseen.json")
    args = parser.parse_args()
    suite = unseen_suite(args.work, args.sample)
    figures = {vote: calibrate(suite, vote, args) for vote in VOTES}
    table = Table(title=f"Label-free critic on unseen rag questions ({args.samples} episodes a case, "
                        f"T={args.temperature:g})")
    for column in ("memory vote", "cases", "pairs", "graders agree", "accuracy (CI95)", "grader ties", "coverage"):
        table.add_column(column)
    for vote, f in figures.items():
        low, high = f["ci95"] or (0, 0)
        accuracy = f"{f['pair_accuracy']:.0%} ({low:.0%}-{high:.0%})" if f["pair_accuracy"] is not None else "-"
        table.add_row(vote, str(f["cases"]), str(f["pairs"]), f"{f['agree']}/{f['agree'] + f['disagree']}",
                      accuracy, str(f["gold_ties"]), f"{f['covered']}/{f['cases']} ({f['coverage']:.0%})")
    Console().print(table)
    args.out.write_text(json.dumps({"limit": args.limit, "samples": args.samples, "temperature": args.temperature,
                                    "votes": figures}, indent=1))
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
