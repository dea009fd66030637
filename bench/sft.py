"""SFT training benchmark: demonstrations per second per pass, TRL's separate sequences against strop's token trees.

Two SFT trainings (``train.method = "sft"``) on the same chosen actions from the same base model, side by side in
one run, each with the machine's defaults otherwise (bfloat16 where the CPU multiplies it in hardware):

1. ``TRL``: TRL's SFTTrainer as it comes (``train.shared_context = false``: every demonstration its own sequence,
   batch 1 x 4 accumulated steps);
2. ``strop``: the defaults (each update's demonstrations packed into token trees as one step, those that share a
   context, the system prompt and exemplars, drawn into the same update).

Both log the same losses up to rounding (tests/training/test_sft.py checks it in float32); the run reports each
one's mean training loss and its held-out loss beside the speed (the two draw their batches in another order).
Demonstrations per second per pass = training rows x passes / seconds of the whole training call (model loading,
tokenizing, steps, saving). The chosen actions come from a round's ``pairs.jsonl`` (``--from``), the first
``--rows`` distinct ones, such as the word-problem demonstrations ``bench/word_problem_demos.py pairs`` writes.

    .venv/bin/python bench/sft.py --from PAIRS [--rows 96] [--epochs 1] [--json bench/results/sft.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from strop.config import TrainSettings, machine
from strop.serving.models import model_dir
from strop.training.dpo import best_actions, read_pairs, train_adapter

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, required=True, help="A round's pairs.jsonl.")
    parser.add_argument("--rows", type=int, default=96, help="Distinct chosen actions trained on.")
    parser.add_argument("--epochs", type=float, default=1.0, help="Passes over them.")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "sft.json")
    args = parser.parse_args()
    base = model_dir(REPO / ".strop" / "models")
    pairs = first_distinct(read_pairs(args.source), args.rows)
    config = TrainSettings(method="sft", sft_epochs=args.epochs, min_pairs=1)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "pairs.jsonl"
        source.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
        for name, update in (("TRL", {"shared_context": False}), ("strop", {})):
            Console(stderr=True).print(f"[dim]{name}: SFT on {len(pairs)} demonstrations[/]")
            began = time.perf_counter()
            meta = train_adapter(source, base, Path(tmp) / name, config.model_copy(update=update))
            seconds = time.perf_counter() - began
            runs.append({"path": name, "seconds": seconds, "rows": meta["pairs"]["train"],
                         "rows_per_s_per_pass": meta["pairs"]["train"] * args.epochs / seconds,
                         "train_loss": meta["metrics"].get("sft_train_loss"),
                         "held_out_loss": meta["metrics"].get("sft_eval_loss"),
                         "config": config.model_copy(update=update).model_dump()})
    result = {"source": str(args.source), "rows": len(pairs), "epochs": args.epochs,
              "load_avg_1m": os.getloadavg()[0], "runs": runs,
              "speedup_vs_trl": runs[1]["rows_per_s_per_pass"] / runs[0]["rows_per_s_per_pass"]}
    report(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), **result}, indent=2))


def first_distinct(pairs: list[dict], rows: int) -> list[dict]:
    """The first pairs whose chosen actions are ``rows`` distinct ones (what SFT trains on)."""
    kept, seen = [], set()
    for pair in pairs:
        key = json.dumps(best_actions([pair])[0], sort_keys=True)
        if key not in seen:
            seen.add(key)
            kept.append(pair)
        if len(kept) == rows:
            return kept
    raise SystemExit(f"The pairs file holds {len(kept)} distinct chosen actions; lower --rows (it asks {rows}).")


def report(result: dict) -> None:
    table = Table(title=f"SFT: {result['rows']} demonstrations, {result['epochs']:g} pass(es)")
    for column in ("path", "seconds", "demonstrations/s per pass", "mean training loss", "held-out loss"):
        table.add_column(column)
    for run in result["runs"]:
        table.add_row(run["path"], f"{run['seconds']:.1f}", f"{run['rows_per_s_per_pass']:.3f}",
                      *(f"{run[k]:.4f}" if run[k] is not None else "-" for k in ("train_loss", "held_out_loss")))
    out = Console()
    out.print(table)
    out.print(f"strop / TRL demonstrations per second: [bold]{result['speedup_vs_trl']:.2f}x[/]")


if __name__ == "__main__":
    main()
