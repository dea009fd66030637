"""The label-free critic on cases no suite case holds, with each value of one of its settings.

A built-in suite keeps a sample of its data file; the lines outside that sample (a memory suite's over the same
corpus) become a suite of their own in ``--work``, split by id the same way. `strop critic calibrate --against-gold`
then samples K episodes of ``--limit`` of its train cases once and scores them with each value of the critic
setting (the later values read the first's episodes back, with no server), so every value judges the very same episodes.

    STROP_STATE_DIR=/tmp/unseen .venv/bin/python bench/critic_unseen.py --work /tmp/unseen/rag
    STROP_STATE_DIR=/tmp/unseen .venv/bin/python bench/critic_unseen.py --work /tmp/unseen/tools --suite tools \
        --setting call_vote --values function call --out bench/results/critic-unseen-tools.json
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


def unseen_suite(work: Path, sample: int, name: str = "rag", measured: frozenset[str] = frozenset()) -> Path:
    """A copy of the built-in suite ``name`` over the lines of its data files that its own sample left out (and
    the ``measured`` case ids), ``sample`` lines for each of its data entries."""
    suite = load_suite(name)
    spec = yaml.safe_load(resolve(name).read_text(encoding="utf-8"))
    kept = {case.id for case in suite.cases} | measured
    work.mkdir(parents=True, exist_ok=True)
    rest: dict[str, Path] = {}
    for data in spec["data"]:
        if data["path"] not in rest:
            rest[data["path"]] = work / f"unseen-{len(rest)}.jsonl"
            source = resolve_path(suite, data["path"]).read_text(encoding="utf-8").splitlines(keepends=True)
            rest[data["path"]].write_text("".join(line for line in source if str(json.loads(line)["id"]) not in kept),
                                          encoding="utf-8")
    spec["data"] = [{**data, "path": str(rest[data["path"]]), "sample": sample} for data in spec["data"]]
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def calibrate(suite: Path, value: str, args: argparse.Namespace) -> dict:
    out = args.work / f"calibrate-{value}.json"
    subprocess.run([sys.executable, "-m", "strop", "critic", "calibrate", "--against-gold", str(suite),
                    "--limit", str(args.limit), "-k", str(args.samples), "--temperature", str(args.temperature),
                    "--json", str(out)], env={**os.environ, f"STROP_CRITIC__{args.setting.upper()}": value}, check=True)
    return json.loads(out.read_text())["suites"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for the unseen cases' suite.")
    parser.add_argument("--suite", default="rag", help="The built-in suite whose data file's other lines to use.")
    parser.add_argument("--setting", default="memory_vote", help="The [critic] setting compared.")
    parser.add_argument("--values", nargs="+", default=["relevance", "answer", "passage"])
    parser.add_argument("--sample", type=int, default=300, help="Unseen lines kept (then split by id).")
    parser.add_argument("--limit", type=int, default=100, help="Train cases sampled.")
    parser.add_argument("--samples", "-k", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--exclude", type=Path, nargs="*", default=[],
                        help="Episode files of an earlier measurement (<state>/calibrate/*.jsonl): their cases are "
                             "left out, so this one is a fresh sample.")
    parser.add_argument("--out", type=Path, default=RESULTS / "critic-unseen.json")
    args = parser.parse_args()
    measured = frozenset(str(json.loads(line)["case"]) for path in args.exclude
                         for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    suite = unseen_suite(args.work, args.sample, args.suite, measured)
    figures = {value: calibrate(suite, value, args) for value in args.values}
    table = Table(title=f"Label-free critic on unseen {args.suite} cases ({args.samples} episodes a case, "
                        f"T={args.temperature:g})")
    for column in (args.setting, "cases", "pairs", "graders agree", "accuracy (CI95)", "grader ties", "coverage"):
        table.add_column(column)
    for value, f in figures.items():
        low, high = f["ci95"] or (0, 0)
        accuracy = f"{f['pair_accuracy']:.0%} ({low:.0%}-{high:.0%})" if f["pair_accuracy"] is not None else "-"
        table.add_row(value, str(f["cases"]), str(f["pairs"]), f"{f['agree']}/{f['agree'] + f['disagree']}",
                      accuracy, str(f["gold_ties"]), f"{f['covered']}/{f['cases']} ({f['coverage']:.0%})")
    Console().print(table)
    args.out.write_text(json.dumps({"suite": args.suite, "setting": args.setting, "limit": args.limit,
                                    "excluded_cases": len(measured),
                                    "samples": args.samples, "temperature": args.temperature, "values": figures},
                                   indent=1))
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
