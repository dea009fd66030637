"""KV-cache block size: agent episodes with vLLM's CPU default (128 tokens) against strop's `serve.block_size`.

Each side gets a fresh state folder and server, then `strop eval` runs the same train cases of arithmetic and
tools, greedy, with the base model; sides alternate (A B A B) so drift on a shared machine hits both. Episodes
are prefill-bound on a CPU, and the prefix cache works in whole blocks: with smaller blocks an episode's next
step re-computes less of what it shares with the step before. Prints the wall-clock ratio and whether every
answer was the same; writes bench/results/block_size.json.

    .venv/bin/python bench/block_size.py [--sizes 128 32] [--repeats 2] [--limit 24]
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

from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "block_size.json"
STROP = [sys.executable, "-m", "strop"]
console = Console()


def one_side(size: int, limit: int, folder: Path) -> tuple[float, dict[str, str]]:
    """Seconds for the evaluation at ``size`` and its answers by case."""
    env = {**os.environ, "STROP_STATE_DIR": str(folder / "state"), "STROP_SERVE__BLOCK_SIZE": str(size),
           "STROP_MODELS_DIR": os.environ.get("STROP_MODELS_DIR", str(REPO / ".strop" / "models"))}
    report = folder / "eval.json"
    subprocess.run([*STROP, "serve", "start"], env=env, check=True, capture_output=True)
    try:
        began = time.perf_counter()
        subprocess.run([*STROP, "eval", "arithmetic", "tools", "--split", "train", "--limit", str(limit),
                        "--adapter", "base", "--json", str(report)], env=env, check=True, capture_output=True)
        seconds = time.perf_counter() - began
    finally:
        subprocess.run([*STROP, "serve", "stop"], env=env, capture_output=True)
    results = json.loads(report.read_text())["results"]
    return seconds, {f"{r['suite']}/{r['case']}": r["answer"] for r in results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[128, 32], metavar=("BASELINE", "CANDIDATE"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit", type=int, default=24, help="Train cases per suite.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    seconds: dict[int, list[float]] = {size: [] for size in args.sizes}
    answers: dict[int, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for size in args.sizes:
                folder = Path(tmp) / f"{size}-{repeat}"
                taken, answers[size] = one_side(size, args.limit, folder)
                seconds[size].append(round(taken, 1))
                console.print(f"block {size:>4}: {taken:6.1f} s (run {repeat + 1})")
    baseline, candidate = args.sizes
    same = sum(answers[baseline][case] == answers[candidate].get(case) for case in answers[baseline])
    ratio = statistics.mean(seconds[baseline]) / statistics.mean(seconds[candidate])
    console.print(f"block {candidate} against {baseline}: {ratio:.2f}x faster, {same} of {len(answers[baseline])} "
                  "answers the same")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"sizes": args.sizes, "seconds": {str(k): v for k, v in seconds.items()},
                                    "speedup": round(ratio, 3), "episodes": len(answers[baseline]),
                                    "same_answers": same, "load_average": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
