"""A reward model as the critic's judge: the base model with a LoRA and a scalar head, trained with TRL's
``RewardTrainer`` on preference pairs (a question, the answer people chose, the one they rejected).

It reads two answers to one question and prefers the one with the higher reward: ``p_a = sigmoid(r_a - r_b)``.
Unlike the prompted judge it has no position to be biased by. ``strop critic calibrate --mode reward`` measures
it against people by cross-fitting: the pairs are split into folds by question, and each fold is judged by a
model trained on the other folds only, so every label is judged by a model that never saw it nor its question.
``strop critic train-reward`` trains the one the critic uses (``critic.judge_mode = "reward"``) on every
labelled pair and the pairs people made in chat.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from strop.config import cpu_has_bf16
from strop.errors import StropError
from strop.scenarios.judge import LabelledPair, Outcome, Preference, chosen_sides, decide

# Measured on the 261 HHH and TruthfulQA pairs, two folds (README, "The judge against people").
EPOCHS = 2.0
LEARNING_RATE = 2e-4
MAX_LENGTH = 512  # tokens of question and answer; longer pairs are left out of training, cut when judged
META = "strop-reward.json"


@dataclass(frozen=True)
class Recipe:
    """How a reward model is trained (the defaults are the measured ones; tests shrink them)."""

    epochs: float = EPOCHS
    learning_rate: float = LEARNING_RATE
    lora_r: int = 16
    target_modules: str | tuple[str, ...] = "all-linear"
    max_length: int = MAX_LENGTH
    threads: int = 2
    seed: int = 0
    # bfloat16 autocast only where the CPU multiplies it in hardware: elsewhere it is emulated, and a test's
    # 32-sample training on bfloat16 weights (the checkpoint's dtype) took 510 s on a CPU with AVX2 alone
    bf16: bool = field(default_factory=cpu_has_bf16)


def reward_model_dir(settings) -> Path:
    return settings.state_dir / "critic" / "reward-model"


def from_feedback(pairs: list[dict]) -> list[LabelledPair]:
    """Pairs people gave in chat (TRL's conversational format) as question and answers: the last question asked
    and the two replies, once each."""
    made = {}
    for pair in pairs:
        asked = [m.get("content") for m in pair.get("prompt", []) if m.get("role") == "user"]
        chosen, rejected = (str((pair.get(side) or [{}])[-1].get("content") or "") for side in ("chosen", "rejected"))
        if asked and chosen and rejected:
            made[(asked[-1], chosen, rejected)] = LabelledPair(f"feedback-{len(made)}", "feedback", str(asked[-1]),
                                                              chosen, rejected, "feedback")
    return list(made.values())


def train(pairs: list[LabelledPair], base: Path, out: Path, recipe: Recipe = Recipe()) -> Path:
    """Train on ``pairs`` and save the LoRA and its head in ``out`` (which appears only when complete)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    if len(pairs) < 2:
        raise StropError(f"A reward model needs at least 2 labelled pairs, got {len(pairs)}.",
                         fix="Pass JSONL files of pairs {id, category, prompt, chosen, rejected}.")
    quiet()
    torch.set_num_threads(recipe.threads)
    rows = [{"prompt": [{"role": "user", "content": p.prompt}], "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(base)
    args = RewardConfig(output_dir=str(partial / "trainer"), num_train_epochs=recipe.epochs,
                        learning_rate=recipe.learning_rate, per_device_train_batch_size=4,
                        gradient_accumulation_steps=2, max_length=recipe.max_length,
                        center_rewards_coefficient=0.01, save_strategy="no", logging_strategy="no", report_to=[],
                        seed=recipe.seed, use_cpu=True, disable_tqdm=True, bf16=recipe.bf16,
                        gradient_checkpointing=False)
    lora = LoraConfig(task_type="SEQ_CLS", r=recipe.lora_r, lora_alpha=2 * recipe.lora_r, lora_dropout=0.05,
                      target_modules=recipe.target_modules if isinstance(recipe.target_modules, str)
                      else list(recipe.target_modules))
    head = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    trainer = RewardTrainer(model=head, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                            peft_config=lora)
    result = trainer.train()
    trainer.model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(partial / "trainer", ignore_errors=True)
    (partial / META).write_text(json.dumps({"pairs": len(pairs), "base": str(base), "loss": result.training_loss,
                                            "recipe": {**recipe.__dict__}}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def quiet() -> None:
    """No per-step progress bars or weight-loading reports: the command shows its own progress."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


class RewardModel:
    """A trained reward model, read one answer at a time (cached); safe to ask from several threads."""

    def __init__(self, path: Path, base: Path, tie_margin: float = 0.1, threads: int = 2, bf16: bool | None = None):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not (path / META).is_file():
            raise StropError(f"No reward model at {path}.", fix="Train one: strop critic train-reward")
        quiet()
        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        bf16 = cpu_has_bf16() if bf16 is None else bf16  # emulated, far slower, on a CPU without bfloat16 hardware
        head = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1,
                                                                  dtype=torch.bfloat16 if bf16 else torch.float32)
        head.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = PeftModel.from_pretrained(head, path).merge_and_unload().eval()
        self.tie_margin = tie_margin
        self._lock, self._rewards = threading.Lock(), {}

    def reward(self, question: str, answer: str) -> float:
        import torch

        key = (question, answer)
        with self._lock:
            if key not in self._rewards:
                text = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], tokenize=False)
                ids = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=MAX_LENGTH)
                with torch.inference_mode():
                    self._rewards[key] = float(self.model(**ids).logits[0, 0])
            return self._rewards[key]

    def preference(self, question: str, answer_a: str, answer_b: str) -> Preference:
        a, b = self.reward(question, answer_a), self.reward(question, answer_b)
        p_a = 1.0 / (1.0 + math.exp(b - a))
        return Preference(p_a, decide(p_a, self.tie_margin), (f"reward {a:.3f}", f"reward {b:.3f}"), "reward")

    async def compare(self, question: str, answer_a: str, answer_b: str) -> Preference:
        """The judge's interface (see ``LLMJudge.compare``)."""
        return await asyncio.to_thread(self.preference, question, answer_a, answer_b)

    async def close(self) -> None:
        return None


def folds_by_question(pairs: list[LabelledPair], folds: int, seed: int) -> list[int]:
    """Each pair's fold; all pairs of one question share a fold."""
    questions = sorted({p.prompt for p in pairs})
    random.Random(seed).shuffle(questions)
    fold_of = {q: i % folds for i, q in enumerate(questions)}
    return [fold_of[p.prompt] for p in pairs]


def cross_fitted(pairs: list[LabelledPair], base: Path, work: Path, folds: int = 2, tie_margin: float = 0.1,
                 recipe: Recipe = Recipe(), stage: Callable[[str], None] | None = None) -> list[Outcome]:
    """Every pair judged by a reward model trained on the other folds; the chosen answer is shown as A or B by a
    seeded coin, as for the prompted judge (a reward model reads each answer alone, so the side cannot matter)."""
    if folds < 2 or len({p.prompt for p in pairs}) < folds:
        raise StropError(f"Cross-fitting needs at least {max(folds, 2)} questions and --folds 2 or more.",
                         fix="Pass more pairs, or fewer folds.")
    of = folds_by_question(pairs, folds, recipe.seed)
    sides = chosen_sides(len(pairs), recipe.seed)
    outcomes: dict[int, Outcome] = {}
    for fold in range(folds):
        if stage:
            stage(f"fold {fold + 1} of {folds}: training on {sum(f != fold for f in of)} pairs")
        path = train([p for p, f in zip(pairs, of, strict=True) if f != fold], base, work / f"fold-{fold + 1}",
                     recipe)
        judge = RewardModel(path, base, tie_margin, recipe.threads, recipe.bf16)
        if stage:
            stage(f"fold {fold + 1} of {folds}: judging {sum(f == fold for f in of)} pairs it never saw")
        for i, (pair, f, side) in enumerate(zip(pairs, of, sides, strict=True)):
            if f == fold:
                a, b = (pair.chosen, pair.rejected) if side == "a" else (pair.rejected, pair.chosen)
                outcomes[i] = Outcome(pair, side, judge.preference(pair.prompt, a, b))
    return [outcomes[i] for i in range(len(pairs))]
