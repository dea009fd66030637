"""DPO training benchmark: pairs per second per pass, and the held-out reward accuracy the adapter reaches.

Trainings on the same pairs from the same base model, one pass each, side by side in one run:

1. ``before``: strop with the former training defaults (TRL's separate sequences, the reference computed in
   every step, batch 1 x 4 accumulated steps);
2. ``strop``: strop's defaults (each update's 4 pairs packed into token trees as one step, pairs that share a
   context drawn into the same update, the reference log-probabilities computed once before training);
3. ``bare TRL``: a plain TRL script configured the same way as (2) (batch 1 x 4 accumulated steps,
   precomputed reference), without the token trees.

With ``--ablations``, also: ``strop, no grouping`` (token trees per pair, each accumulated step alone: the
former strop default), ``strop bf16`` (strop's defaults with matrix products in bfloat16, ``train.bf16``) and
``bare TRL bf16`` (the TRL script with ``bf16=True``).

Pairs per second per pass = training pairs x passes / seconds of the whole training call (model loading,
tokenizing, reference, steps, saving). Each adapter is then scored on held-out pairs with a plain forward
pass: reward accuracy = share of pairs whose chosen answer gains more log-probability over the base model
than the rejected one; the pairs the two adapters judge differently get an exact McNemar test.

Pairs are built like an improvement round's (``Improver.pairs``): the prompt is the agent's real context
(``Agent.context``: system prompt with the tool list, few-shot exemplars, the conversation so far) for train
cases of the arithmetic and tools suites, at the first or second decision; chosen is the right action
(a correct calculator call, the right final answer, the declared function with its expected arguments),
rejected a wrong one. With ``--from``, the first pairs of a round's ``pairs.jsonl`` instead.

    .venv/bin/python bench/dpo.py [--pairs 18] [--held-out 24] [--ablations] [--from ROUND/pairs.jsonl] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from strop.config import TrainSettings, machine
from strop.serving.models import model_dir
from strop.training.dpo import fitted_pairs, read_pairs, stages, train_adapter

REPO = Path(__file__).resolve().parent.parent
console = Console(stderr=True)
BEFORE = TrainSettings(batch_size=1, gradient_accumulation=4, shared_context=False, precompute_ref=False)
OPERATORS = (("plus", "+"), ("minus", "-"), ("times", "*"), ("divided by", "/"))


# -- pairs ---------------------------------------------------------------------------------------
def agent_pairs(n: int) -> list[dict[str, Any]]:
    """``n`` pairs whose prompts are the agent's real contexts, alternating arithmetic and tools cases."""
    from strop.config import Settings
    from strop.scenarios.runner import Evaluator
    from strop.scenarios.suite import load_suite
    from strop.serving.endpoint import Endpoint

    # The agents are only asked for their context: no request reaches this address.
    evaluator = Evaluator(Settings(), Endpoint(base_url="http://127.0.0.1:9/v1", model="unused", api_key="EMPTY",
                                               managed=False))
    makers = {"arithmetic": _arithmetic_pair, "tools": _tools_pair}
    suites = {name: load_suite(name) for name in makers}
    cases = {name: suite.select("train") for name, suite in suites.items()}
    pairs = []
    for index in range(n):
        name = ("arithmetic", "tools")[index % 2]
        case = cases[name][index // 2 % len(cases[name])]
        history, chosen, rejected = makers[name](case, index // 2)
        context = evaluator.agent(suites[name], case).context(history)
        pairs.append({"prompt": context, "chosen": [_said(chosen)], "rejected": [_said(rejected)]})
    return pairs


def _arithmetic_pair(case, variant: int) -> tuple[list[dict], dict, dict]:
    expression = case.input.removeprefix("What is ").rstrip("?")
    for word, sign in OPERATORS:
        expression = expression.replace(word, sign)
    right = case.graders[0].value
    answer = str(int(right)) if float(right).is_integer() else str(right)
    question = {"role": "user", "content": case.input}
    if variant % 2 == 0:  # the first decision: calculate, not guess
        return ([question], {"tool": "calculator", "args": {"expression": expression}},
                {"tool": "think", "args": {"thought": f"It is about {int(right) + 7}."}})
    called = {"tool": "calculator", "args": {"expression": expression}}
    history = [question, _said(called), {"role": "tool", "content": answer}]
    return (history, {"tool": "final_answer", "args": {"answer": answer, "sources": []}},
            {"tool": "final_answer", "args": {"answer": str(int(right) + 7), "sources": []}})


def _tools_pair(case, variant: int) -> tuple[list[dict], dict, dict]:
    from strop.tools.declared import tool_name

    truth = case.graders[0]
    args = {k: v[0] if isinstance(v, list) else v for k, v in truth.args.items()}
    args = {k: v for k, v in args.items() if v != ""}
    spec = case.functions[0]
    chosen = {"tool": tool_name(spec["name"]), "args": args}
    if variant % 2 == 0 or not args:  # a wrong choice of tool
        rejected = {"tool": "think", "args": {"thought": "I will answer from what I know."}}
    else:  # the right tool with a wrong argument
        first = next(iter(args))
        rejected = {"tool": chosen["tool"], "args": args | {first: _wrong(args[first])}}
    return [{"role": "user", "content": case.input}], chosen, rejected


def _wrong(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 7
    return f"{value}x" if isinstance(value, str) else None


def _said(action: dict | str) -> dict[str, str]:
    content = action if isinstance(action, str) else json.dumps(action, separators=(",", ":"))
    return {"role": "assistant", "content": content}  # as vLLM emits an action without free whitespace


def write_pairs(path: Path, pairs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    return path


# -- training ------------------------------------------------------------------------------------
def bare_trl(pairs_path: Path, base: Path, out: Path, config: TrainSettings) -> None:
    """What a user would write with TRL alone, configured as ``config``."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(config.threads)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(out / "trainer"), loss_type=[stages(config.method)[1]], beta=config.beta,
        learning_rate=config.learning_rate, num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation,
        max_length=config.max_length, precompute_ref_log_probs=config.precompute_ref,
        precompute_ref_batch_size=config.ref_batch_size, gradient_checkpointing=False, bf16=config.bf16, use_cpu=True,
        report_to="none", dataloader_num_workers=0, logging_steps=1, save_strategy="no", seed=config.seed,
        lr_scheduler_type="cosine", warmup_steps=0.1, disable_tqdm=True)
    peft = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    columns = ("prompt", "chosen", "rejected")
    trainer = DPOTrainer(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(base), peft_config=peft,
                         train_dataset=Dataset.from_list([{k: p[k] for k in columns} for p in read_pairs(pairs_path)]))
    trainer.train()
    trainer.model.save_pretrained(out)


def through_strop(pairs_path: Path, base: Path, out: Path, config: TrainSettings) -> None:
    train_adapter(pairs_path, base, out, config)


# -- held-out reward accuracy --------------------------------------------------------------------
class Scorer:
    """Sequence log-probabilities of answers by plain forward passes (one sequence at a time, no packing),
    tokenized as TRL tokenizes conversational pairs; the base model's are kept for every adapter."""

    def __init__(self, base: Path, threads: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.base = base
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        self._base_logps: dict[int, tuple[float, float]] = {}

    def correct(self, adapter: Path, pairs: list[dict]) -> list[bool]:
        """Per pair: does the adapter's reward (log-ratio to the base) rank chosen above rejected?"""
        from peft import PeftModel

        model = PeftModel.from_pretrained(self.model, adapter).eval()
        try:
            results = []
            for index, pair in enumerate(pairs):
                if index not in self._base_logps:
                    with model.disable_adapter():
                        self._base_logps[index] = self._logps(model, pair)
                base = self._base_logps[index]
                chosen, rejected = self._logps(model, pair)
                results.append(chosen - base[0] > rejected - base[1])
            return results
        finally:
            self.model = model.unload()

    def _logps(self, model, pair: dict) -> tuple[float, float]:
        import torch

        prompt = self._ids(pair["prompt"], add_generation_prompt=True)
        sums = []
        for answer in (pair["chosen"], pair["rejected"]):
            ids = self._ids(pair["prompt"] + answer)
            start = next((i for i, (a, b) in enumerate(zip(prompt, ids, strict=False)) if a != b),
                         min(len(prompt), len(ids)))
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            picked = logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
            sums.append(picked[start - 1:].sum().item())
        return sums[0], sums[1]

    def _ids(self, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
                    ["input_ids"])


def mcnemar_exact(a: list[bool], b: list[bool]) -> dict[str, Any]:
    """Two-sided exact test on the held-out pairs the two adapters judge differently."""
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n if n else 1.0
    return {"only_before": only_a, "only_after": only_b, "p": min(1.0, 2 * tail)}


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% interval of a proportion."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    centre, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [(centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)]


# -- main ----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=18, help="Training pairs.")
    parser.add_argument("--held-out", type=int, default=24, help="Held-out pairs the adapters are scored on.")
    parser.add_argument("--epochs", type=float, default=1.0, help="Passes over the training pairs.")
    parser.add_argument("--threads", type=int, default=TrainSettings().threads)
    parser.add_argument("--ablations", action="store_true",
                        help="Also strop without grouping, strop in bfloat16 and bare TRL in bfloat16.")
    parser.add_argument("--from", dest="source", type=Path, help="A round's pairs.jsonl instead of built pairs.")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "dpo.json")
    args = parser.parse_args()
    base = model_dir(REPO / ".strop" / "models")
    common = {"held_out": 0.0, "epochs": args.epochs, "threads": args.threads, "min_pairs": 1, "bf16": False}
    after = TrainSettings(**common)
    configs = {"before": BEFORE.model_copy(update=common), "strop": after, "bare TRL": after}
    runners = {"before": through_strop, "strop": through_strop, "bare TRL": bare_trl}
    if args.ablations:
        bf16 = after.model_copy(update={"bf16": True})
        configs |= {"strop, no grouping": after.model_copy(update={"group_context": False}), "strop bf16": bf16,
                    "bare TRL bf16": bf16}
        runners |= {"strop, no grouping": through_strop, "strop bf16": through_strop, "bare TRL bf16": bare_trl}
    with tempfile.TemporaryDirectory() as tmp:
        train_path, held = prepare_pairs(args, base, after.max_length, Path(tmp))
        runs, adapters = [], {}
        for index, name in enumerate(runners):
            console.print(f"[dim]run {index + 1}/{len(runners)}: {name}[/]")
            out = Path(tmp) / f"adapter{index}"
            began, cpu = time.perf_counter(), time.process_time()
            runners[name](train_path, base, out, configs[name])
            seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu
            runs.append({"path": name, "seconds": seconds, "pairs_per_s_per_pass": args.pairs * args.epochs / seconds,
                         "cpu_seconds": cpu_seconds, "config": configs[name].model_dump()})
            adapters[name] = out
        console.print("[dim]scoring the adapters on the held-out pairs[/]")
        scorer = Scorer(base, args.threads)
        correct = {name: scorer.correct(path, held) for name, path in adapters.items()}
    speed = {run["path"]: run["pairs_per_s_per_pass"] for run in runs}
    by_path = {run["path"]: run for run in runs}
    accuracy = {name: sum(c) / len(c) for name, c in correct.items()}
    result = {
        "pairs": args.pairs, "held_out": len(held), "epochs": args.epochs, "threads": args.threads,
        "source": str(args.source or "agent contexts (arithmetic + tools train cases)"),
        "load_avg_1m": os.getloadavg()[0], "runs": runs,
        "speedup_vs_before": speed["strop"] / speed["before"],
        # The machine is shared: CPU seconds of this process are less moved by other people's load than wall time.
        "cpu_speedup_vs_before": runs[0]["cpu_seconds"] / runs[1]["cpu_seconds"],
        "cpu_ratio_vs_bare_trl": runs[2]["cpu_seconds"] / runs[1]["cpu_seconds"],
        "ratio_vs_bare_trl": speed["strop"] / speed["bare TRL"],
        "held_out_reward_accuracy": accuracy,
        "held_out_accuracy_interval_95": {n: wilson(sum(c), len(c)) for n, c in correct.items()},
        "accuracy_difference": accuracy["strop"] - accuracy["before"],
        "mcnemar_before_vs_strop": mcnemar_exact(correct["before"], correct["strop"]),
        "ablations": {name: {"speedup_vs_before": speed[name] / speed["before"],
                             "cpu_speedup_vs_before": by_path["before"]["cpu_seconds"] / run["cpu_seconds"],
                             "accuracy_difference_vs_before": accuracy[name] - accuracy["before"],
                             "mcnemar_vs_before": mcnemar_exact(correct["before"], correct[name])}
                      for name, run in by_path.items() if name not in ("before", "strop", "bare TRL")},
    }
    if "bare TRL bf16" in speed:
        result["ablations"]["strop bf16"]["ratio_vs_bare_trl_bf16"] = speed["strop bf16"] / speed["bare TRL bf16"]
    report(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), **result}, indent=2))


def prepare_pairs(args, base: Path, max_length: int, tmp: Path) -> tuple[Path, list[dict]]:
    """The training pairs (a file) and the held-out pairs, both shortened as training shortens them."""
    from transformers import AutoTokenizer

    total = args.pairs + args.held_out
    source = args.source or write_pairs(tmp / "all.jsonl", agent_pairs(total))
    pairs, _ = fitted_pairs(source, AutoTokenizer.from_pretrained(base), max_length)
    if len(pairs) < total:
        raise SystemExit(f"{source} holds {len(pairs)} pairs that fit max_length {max_length}; "
                         f"lower --pairs or --held-out (they need {total}).")
    # Built pairs alternate arithmetic and tools: every other two are held out until enough are, so both
    # halves hold both kinds.
    held = [p for i, p in enumerate(pairs) if i // 2 % 2 == 1][:args.held_out]
    train = [p for p in pairs[:total] if not any(p is h for h in held)][:args.pairs]
    return write_pairs(tmp / "train.jsonl", train), held


def report(result: dict[str, Any]) -> None:
    table = Table(title=f"DPO training: {result['pairs']} pairs, {result['epochs']:g} pass(es), "
                        f"{result['threads']} thread(s); held-out accuracy on {result['held_out']} pairs")
    for column in ("path", "seconds", "CPU seconds", "pairs/s per pass", "held-out reward accuracy"):
        table.add_column(column)
    for run in result["runs"]:
        table.add_row(run["path"], f"{run['seconds']:.1f}", f"{run['cpu_seconds']:.1f}",
                      f"{run['pairs_per_s_per_pass']:.3f}",
                      f"{result['held_out_reward_accuracy'][run['path']]:.3f}")
    out = Console()
    out.print(table)
    out.print(f"strop / before pairs/s per pass: [bold]{result['speedup_vs_before']:.2f}x[/] (target >= 3); "
              f"strop / bare TRL: [bold]{result['ratio_vs_bare_trl']:.2f}[/] (target >= 0.95); "
              f"in CPU seconds {result['cpu_speedup_vs_before']:.2f}x and {result['cpu_ratio_vs_bare_trl']:.2f}; "
              f"held-out accuracy difference {result['accuracy_difference']:+.3f} (target within 0.05), "
              f"McNemar {result['mcnemar_before_vs_strop']}")
    for name, ablation in result["ablations"].items():
        out.print(f"{name}: {ablation['speedup_vs_before']:.2f}x before "
                  f"(CPU {ablation['cpu_speedup_vs_before']:.2f}x), "
                  f"held-out accuracy difference {ablation['accuracy_difference_vs_before']:+.3f}, "
                  f"McNemar {ablation['mcnemar_vs_before']}")


if __name__ == "__main__":
    main()
