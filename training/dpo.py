"""Preference training: TRL's ``DPOTrainer`` (DPO or IPO loss) with a peft LoRA adapter.

The adapter is trained in a temporary folder beside its final place and renamed there only when it is
complete and its metadata is written, so a crash or kill never leaves a half-written adapter that
could be served. A diverging run (NaN or infinite loss) stops at once and saves nothing.

When a parent adapter is given, its LoRA weights are trained further (improvements accumulate round
after round); the reference policy is the base model (the adapter disabled), as TRL does for peft.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from strop.config import TrainSettings
from strop.errors import StropError
from strop.files import sha256_file, strict_lines
from strop.serving.adapters import ADAPTER_META, Adapter

LOSSES = {"dpo": "sigmoid", "ipo": "ipo"}  # strop's names -> TRL's loss_type
Progress = Callable[[int, int, dict[str, float]], None]  # (step, total steps, latest logged metrics)


class TrainingDiverged(StropError):
    """The loss became NaN or infinite; nothing was saved."""


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """Preference pairs in TRL's conversational format; malformed lines raise with their line number."""
    pairs = []
    fix = "Rebuild the pairs of this round, or remove the line."
    for number, pair in strict_lines(path, fix):
        if not all(isinstance(pair.get(k), list) and pair[k] for k in ("prompt", "chosen", "rejected")):
            raise StropError(f"{path}:{number}: not a preference pair (needs non-empty prompt, chosen, rejected "
                             "message lists).", fix="Rebuild the pairs of this round, or remove the line.")
        pairs.append(pair)
    return pairs


def fit_context(pairs: list[dict[str, Any]], count: Callable[[list[dict]], int],
                max_length: int) -> tuple[list[dict[str, Any]], int]:
    """Pairs shortened to ``max_length`` tokens (prompt and the longer answer, by ``count``).

    The oldest few-shot exemplars go first, each a whole block opened by a user turn before the run's own
    question (the last user turn); the system prompt, the nearest exemplar, the question and its history
    stay. A pair that still does not fit is left out; returns the pairs and how many were left out.
    """
    kept = []
    for pair in pairs:
        prompt = list(pair["prompt"])
        longer = max(pair["chosen"], pair["rejected"], key=lambda m: len(json.dumps(m)))
        while count(prompt + longer) > max_length:
            users = [i for i, m in enumerate(prompt) if m["role"] == "user" and i > 0]
            if len(users) < 3:  # the nearest exemplar and the question itself stay
                break
            prompt = prompt[:users[0]] + prompt[users[1]:]
        if count(prompt + longer) <= max_length:
            kept.append(pair | {"prompt": prompt})
    return kept, len(pairs) - len(kept)


def fitted_pairs(pairs_path: Path, tokenizer, max_length: int) -> tuple[list[dict[str, Any]], int]:
    """The pairs of ``pairs_path`` shortened to ``max_length`` of ``tokenizer``'s chat tokens (see fit_context)."""
    return fit_context(read_pairs(pairs_path), lambda m: len(tokenizer.apply_chat_template(m)["input_ids"]),
                       max_length)


def split_held_out(pairs: list[dict[str, Any]], fraction: float) -> tuple[list[dict], list[dict]]:
    """A stable held-out slice (by a hash of each pair's content), at least one pair when fraction > 0."""
    def unit(pair: dict) -> float:
        digest = hashlib.sha256(json.dumps([pair["prompt"], pair["chosen"]], sort_keys=True).encode()).hexdigest()
        return int(digest[:8], 16) / 2**32

    held = [p for p in pairs if unit(p) < fraction]
    if fraction > 0 and not held and len(pairs) > 1:
        held = [min(pairs, key=unit)]
    return [p for p in pairs if p not in held], held


def train_adapter(pairs_path: Path, base_model: Path, out: Path, config: TrainSettings, *,
                  parent: Adapter | None = None, progress: Progress | None = None,
                  extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a LoRA adapter on ``pairs_path`` and save it at ``out`` with its metadata; returns the metadata.

    Raises:
        StropError: too few pairs, or the loss diverged (TrainingDiverged); nothing is saved then.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    pairs, too_long = fitted_pairs(pairs_path, tokenizer, config.max_length)
    if len(pairs) < config.min_pairs:
        raise StropError(f"Only {len(pairs)} preference pairs in {pairs_path} fit train.max_length "
                         f"{config.max_length} ({too_long} too long); training needs {config.min_pairs}.",
                         fix="Run more rollouts (improve.samples / more prompts), raise train.max_length "
                             "or lower train.min_pairs.")
    train, held = split_held_out(pairs, config.held_out)
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)  # what a killed run left
    work.mkdir(parents=True)
    began = time.time()
    try:
        trainer = _trainer(base_model, tokenizer, parent, train, held, config, work, progress)
        trainer.train()
        history = trainer.state.log_history
        _check_finite(history)
        trainer.model.save_pretrained(work)
        shutil.rmtree(work / "trainer", ignore_errors=True)
        meta = {
            "name": out.name, "created_at": time.time(), "parent": parent.name if parent else None,
            "base_model": str(base_model), "base_checksum": _base_checksum(base_model),
            "data_checksum": sha256_file(pairs_path),
            "pairs": {"train": len(train), "held_out": len(held), "too_long": too_long},
            "config": config.model_dump(), "metrics": _final_metrics(history), "train_s": time.time() - began,
        } | (extra_meta or {})
        (work / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
        plot_curves(history, work / "training.png")
        (work / ADAPTER_META).write_text(json.dumps(meta, indent=2))
        work.rename(out)
        return meta
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _trainer(base_model: Path, tokenizer, parent: Adapter | None, train: list[dict], held: list[dict],
             config: TrainSettings, work: Path, progress: Progress | None):
    import datasets
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback
    from transformers.utils import logging as transformers_logging
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(config.threads)
    datasets.disable_progress_bars()  # progress goes to the caller
    transformers_logging.disable_progress_bar()

    class Watch(TrainerCallback):
        """Reports progress and stops at the first non-finite loss."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if any(isinstance(v, float) and not math.isfinite(v) for k, v in logs.items() if "loss" in k):
                control.should_training_stop = True
            if progress:
                progress(state.global_step, state.max_steps, logs)

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    peft_config = None
    if parent is not None:
        model = PeftModel.from_pretrained(model, parent.path, is_trainable=True)
    else:
        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    args = DPOConfig(
        output_dir=str(work / "trainer"), loss_type=[LOSSES[config.loss]], beta=config.beta,
        learning_rate=config.learning_rate, num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation, max_length=config.max_length,  # fit_context did it
        gradient_checkpointing=False, bf16=False, use_cpu=True, report_to="none", dataloader_num_workers=0,
        logging_steps=1, save_strategy="no", eval_strategy="epoch" if held else "no", seed=config.seed,
        lr_scheduler_type="cosine", warmup_steps=0.1,  # a fraction: 10% of the steps
        disable_tqdm=True,  # progress goes to the caller
    )
    columns = ("prompt", "chosen", "rejected")
    trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                         train_dataset=Dataset.from_list([{k: p[k] for k in columns} for p in train]),
                         eval_dataset=Dataset.from_list([{k: p[k] for k in columns} for p in held]) if held else None,
                         callbacks=[Watch()])
    trainer.remove_callback(PrinterCallback)  # metrics go to metrics.jsonl and the caller, not stdout
    return trainer


def _check_finite(history: list[dict[str, Any]]) -> None:
    for row in history:
        for key, value in row.items():
            if "loss" in key and isinstance(value, float) and not math.isfinite(value):
                raise TrainingDiverged(f"Training diverged: {key} became {value} at step {row.get('step')}.",
                                       fix="Lower train.learning_rate or raise train.beta; nothing was saved.")


def _final_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    final: dict[str, float] = {}
    for row in history:
        final.update({k: v for k, v in row.items() if isinstance(v, int | float)})
    return final


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss, reward margin and accuracy per step (train and held-out) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, names in zip(axes, (("loss", "eval_loss"), ("rewards/margins", "eval_rewards/margins"),
                                ("rewards/accuracies", "eval_rewards/accuracies")), strict=True):
        for name in names:
            points = [(row["step"], row[name]) for row in history if name in row and "step" in row]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o" if name.startswith("eval") else None,
                        label="held-out" if name.startswith("eval") else "train")
        ax.set_title(names[0])
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _base_checksum(base_model: Path) -> str:
    """The model manifest's own checksum (it lists every weight file's SHA-256)."""
    manifest = base_model / "strop-manifest.json"
    return sha256_file(manifest) if manifest.exists() else ""
