"""DPO training benchmark: preference pairs per second through strop against a bare TRL script.

Both train the same LoRA on the same pairs with the same DPOConfig from the same base model. Runs
alternate bare, strop, bare (so drift in machine load hits both); the ratio compares strop with the
mean of the two bare runs. Pairs are decision-level arithmetic pairs in strop's own format: a
question, a calculator call (chosen) against a wrong final answer (rejected), at max_length 256; or,
with ``--from``, the first pairs of an improvement round's ``pairs.jsonl`` (the context the agent saw,
shortened as strop shortens it to fit max_length) at the default training config.

    .venv/bin/python bench/dpo.py [--pairs 24] [--from .strop/improve/round-0001/pairs.jsonl] [--json F]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from strop.config import TrainSettings
from strop.serving.models import model_dir
from strop.training.dpo import LOSSES, fitted_pairs, read_pairs, split_held_out, train_adapter

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "math" / "arithmetic.jsonl"
console = Console(stderr=True)
SHORT = TrainSettings(max_length=256, held_out=0.0)


def make_pairs(path: Path, n: int) -> Path:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()][:: 1600 // n][:n]
    with path.open("w") as fh:
        for row in rows:
            expression = row["question"].removeprefix("What is ").rstrip("?")
            for word, sign in (("plus", "+"), ("minus", "-"), ("times", "*"), ("divided by", "/")):
                expression = expression.replace(word, sign)
            wrong = str(int(float(row["answer"])) + 7)
            fh.write(json.dumps({
                "prompt": [{"role": "user", "content": row["question"]}],
                "chosen": [{"role": "assistant", "content": json.dumps({"tool": "calculator",
                                                                        "args": {"expression": expression}})}],
                "rejected": [{"role": "assistant", "content": json.dumps({"tool": "final_answer",
                                                                          "args": {"answer": wrong, "sources": []}})}],
            }) + "\n")
    return path


def round_pairs(source: Path, path: Path, n: int, base: Path, max_length: int) -> Path:
    """The first ``n`` pairs of ``source`` that fit ``max_length``, shortened as strop's training shortens them:
    TRL alone would drop every pair whose few-shot context pushes the answer past the limit."""
    from transformers import AutoTokenizer

    pairs, _ = fitted_pairs(source, AutoTokenizer.from_pretrained(base), max_length)
    if len(pairs) < n:
        raise SystemExit(f"{source} holds {len(pairs)} pairs that fit; ask for at most that many with --pairs.")
    path.write_text("".join(json.dumps(pair) + "\n" for pair in pairs[:n]), encoding="utf-8")
    return path


def bare_trl(pairs_path: Path, base: Path, out: Path, config: TrainSettings) -> float:
    """What a user would write with TRL alone; returns training seconds."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(config.threads)
    train, _ = split_held_out(read_pairs(pairs_path), config.held_out)
    began = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(out), loss_type=[LOSSES[config.loss]], beta=config.beta, learning_rate=config.learning_rate,
        num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation, max_length=config.max_length,
        gradient_checkpointing=False, bf16=False, use_cpu=True, report_to="none",
        dataloader_num_workers=0, logging_steps=1, save_strategy="no", seed=config.seed, lr_scheduler_type="cosine",
        warmup_steps=0.1, disable_tqdm=True)
    peft = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(base),
                         train_dataset=Dataset.from_list(train), peft_config=peft)
    trainer.train()
    trainer.model.save_pretrained(out / "adapter")
    return time.perf_counter() - began


def through_strop(pairs_path: Path, base: Path, out: Path, config: TrainSettings) -> float:
    began = time.perf_counter()
    train_adapter(pairs_path, base, out, config)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--from", dest="source", type=Path, help="A round's pairs.jsonl to train on instead.")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "dpo.json")
    args = parser.parse_args()
    base = model_dir(REPO / ".strop" / "models")
    config = TrainSettings(held_out=0.0) if args.source else SHORT
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        pairs = (round_pairs(args.source, path, args.pairs, base, config.max_length) if args.source
                 else make_pairs(path, args.pairs))
        runs = []
        for index, (name, fn) in enumerate((("bare TRL", bare_trl), ("strop", through_strop), ("bare TRL", bare_trl))):
            console.print(f"[dim]run {index + 1}/3: {name}[/]")
            seconds = fn(pairs, base, Path(tmp) / f"out{index}", config)
            runs.append({"path": name, "seconds": seconds, "pairs_per_s": args.pairs / seconds})
    bare = (runs[0]["pairs_per_s"] + runs[2]["pairs_per_s"]) / 2
    result = {"pairs": args.pairs, "source": str(args.source or "arithmetic"), "config": config.model_dump(),
              "runs": runs, "ratio_strop_vs_bare": runs[1]["pairs_per_s"] / bare}
    table = Table(title=f"DPO training, {args.pairs} pairs, max_length {config.max_length}")
    for column in ("run", "path", "seconds", "pairs/s"):
        table.add_column(column)
    for i, run in enumerate(runs, 1):
        table.add_row(str(i), run["path"], f"{run['seconds']:.1f}", f"{run['pairs_per_s']:.3f}")
    Console().print(table)
    Console().print(f"strop / bare TRL pairs/s: [bold]{result['ratio_strop_vs_bare']:.3f}[/] (target >= 0.95)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
