"""One `[serve]` setting (or an environment variable of the server, named in capitals), two values, on agent
episodes: e.g. the KV-cache block size, eager against compiled, or vLLM's CPU thread binding.

Each side gets a fresh state folder and server (its start timed apart), then `strop eval` runs the same cases
(default: train cases of arithmetic and tools), greedy, with the base model; sides alternate (A B A B) so drift on
a shared machine hits both. Prints the evaluation's wall-clock ratio, the start times and whether every answer was
the same; writes bench/results/<setting>.json.

    .venv/bin/python bench/serve_setting.py block_size 128 32 [--repeats 2] [--limit 24]
    .venv/bin/python bench/serve_setting.py enforce_eager true false
    .venv/bin/python bench/serve_setting.py VLLM_CPU_OMP_THREADS_BIND auto nobind
    .venv/bin/python bench/serve_setting.py extra_args '[]' '["--speculative-config", "..."]' \
        --suites arithmetic tools rag word_problems --split gate --limit 1000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from strop.config import machine
from strop.scenarios.stats import p_text, sign_p

REPO = Path(__file__).resolve().parents[1]
STROP = [sys.executable, "-m", "strop"]
console = Console()


def one_side(setting: str, value: str, cases: list[str],
             folder: Path) -> tuple[float, float, dict[str, dict[str, Any]]]:
    """Seconds to start the server and to run the evaluation (``cases``: `strop eval` arguments) with ``setting``
    at ``value``; answers and whether they passed, by case."""
    variable = setting if setting.isupper() else f"STROP_SERVE__{setting.upper()}"
    env = {**os.environ, "STROP_STATE_DIR": str(folder / "state"), variable: value,
           "STROP_MODELS_DIR": os.environ.get("STROP_MODELS_DIR", str(REPO / ".strop" / "models"))}
    report = folder / "eval.json"
    began = time.perf_counter()
    subprocess.run([*STROP, "serve", "start"], env=env, check=True, capture_output=True)
    started = time.perf_counter()
    try:
        subprocess.run([*STROP, "eval", *cases, "--adapter", "base", "--json", str(report)], env=env, check=True,
                       capture_output=True)
        seconds = time.perf_counter() - started
    finally:
        subprocess.run([*STROP, "serve", "stop"], env=env, capture_output=True)
    results = json.loads(report.read_text())["results"]
    return started - began, seconds, {f"{r['suite']}/{r['case']}": {"answer": r["answer"], "passed": r["passed"]}
                                      for r in results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setting", help="A [serve] field (block_size, enforce_eager) or, in capitals, an environment "
                        "variable of the server (VLLM_CPU_OMP_THREADS_BIND).")
    parser.add_argument("values", nargs=2, metavar="VALUE", help="The baseline's value, then the candidate's.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit", type=int, default=24, help="Cases per suite.")
    parser.add_argument("--suites", nargs="+", default=["arithmetic", "tools"])
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", type=Path, help="Default: bench/results/<setting>.json.")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {value: [] for value in args.values}
    starts: dict[str, list[float]] = {value: [] for value in args.values}
    answers: dict[str, dict[str, dict[str, Any]]] = {}
    cases = [*args.suites, "--split", args.split, "--limit", str(args.limit)]
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for value in args.values:
                folder = Path(tmp) / f"{value}-{repeat}"
                start, taken, answers[value] = one_side(args.setting, value, cases, folder)
                seconds[value].append(round(taken, 1))
                starts[value].append(round(start, 1))
                console.print(f"{args.setting} {value:>6}: start {start:5.1f} s, episodes {taken:6.1f} s "
                              f"(run {repeat + 1})")
    baseline, candidate = args.values
    same = sum(answers[baseline][case]["answer"] == answers[candidate].get(case, {}).get("answer")
               for case in answers[baseline])
    passed = {value: sum(r["passed"] for r in answers[value].values()) for value in args.values}
    # the cases whose pass/fail changed, and whether that is more than chance (paired exact test)
    now = {case: answers[candidate].get(case, {}).get("passed", False) for case in answers[baseline]}
    won = sum(now[case] and not r["passed"] for case, r in answers[baseline].items())
    lost = sum(r["passed"] and not now[case] for case, r in answers[baseline].items())
    p_value = sign_p(won, lost, "two-sided")
    ratio = statistics.mean(seconds[baseline]) / statistics.mean(seconds[candidate])
    console.print(f"{args.setting} {candidate} against {baseline}: episodes {ratio:.2f}x faster, {same} of "
                  f"{len(answers[baseline])} answers the same, passed {passed[baseline]} against {passed[candidate]} "
                  f"({won} cases won, {lost} lost, two-sided {p_text(p_value)})")
    out = args.out or REPO / "bench" / "results" / f"{args.setting}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "setting": args.setting, "values": args.values, "seconds": seconds,
                               "start_seconds": starts, "speedup": round(ratio, 3),
                               "suites": args.suites, "split": args.split,
                               "episodes": len(answers[baseline]), "same_answers": same, "passed": passed,
                               "cases_won": won, "cases_lost": lost, "p_two_sided": p_value,
                               "load_average": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
