"""Preference training: TRL's ``DPOTrainer`` (DPO or IPO loss) with a peft LoRA adapter, optionally after an SFT
warm start on the chosen actions (TRL's ``SFTTrainer``, the same adapter): ``train.method``.

The adapter is trained in a temporary folder beside its final place and renamed there only when it is
complete and its metadata is written, so a crash or kill never leaves a half-written adapter that
could be served. A diverging run (NaN or infinite loss) stops at once and saves nothing.

When a parent adapter is given, its LoRA weights are trained further (improvements accumulate round
after round). The reference is always the policy the preference stage starts from: TRL freezes a copy of a
given adapter as the "ref" adapter (the parent, or what an SFT warm start made of the LoRA), and a fresh
LoRA starts at zero, so the model alone (in ``merged`` serving: the current policy merged) is its reference.

Speed: pairs of a round share most of their tokens (system prompt and few-shot exemplars, and each
pair's chosen and rejected share their whole prompt). ``SharedContextDPOTrainer`` packs a batch's
sequences into one token tree, so every shared token is encoded once, and projects onto the
vocabulary only the answer tokens; the log-probabilities are the same as TRL's separate sequences.
The reference log-probabilities are computed once before training (TRL ``precompute_ref_log_probs``).
With ``group_context`` the pairs of one optimizer update are one packed step (the same update as accumulating
them one by one), and pairs that share a context are drawn into the same update (``ContextBatches``), so the
tree shares the system prompt and exemplars across pairs too.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
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
    warm_start, loss = stages(config.method)
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)  # what a killed run left
    work.mkdir(parents=True)
    began = time.time()
    try:
        history, model = [], None
        if warm_start:
            trainer = _sft_trainer(base_model, tokenizer, parent, train, held, config, work, progress)
            trainer.train()
            history = [{("step" if k == "step" else f"sft_{k}"): v for k, v in row.items()}
                       for row in trainer.state.log_history]
            _check_finite(history)
            model = trainer.model
        if loss:
            trainer = _trainer(base_model, tokenizer, parent, train, held, config, work, progress, loss, warm=model)
            trainer.train()
            done = max((row.get("step", 0) for row in history), default=0)  # the preference steps follow SFT's
            history += [row | {"step": row.get("step", 0) + done} for row in trainer.state.log_history]
            _check_finite(history)
        trainer.model.save_pretrained(work)
        shutil.rmtree(work / "trainer", ignore_errors=True)
        meta = {
            "name": out.name, "created_at": time.time(), "parent": parent.name if parent else None,
            "base_model": str(base_model), "base_checksum": _base_checksum(base_model),
            "data_checksum": sha256_file(pairs_path),
            "pairs": {"train": len(train), "held_out": len(held), "too_long": too_long},
            "config": config.model_dump(), "passes": passes(config, len(train)) if loss else None,
            "metrics": _final_metrics(history), "train_s": time.time() - began,
        } | (extra_meta or {})
        (work / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
        plot_curves(history, work / "training.png")
        (work / ADAPTER_META).write_text(json.dumps(meta, indent=2))
        work.rename(out)
        return meta
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stages(method: str) -> tuple[bool, str | None]:
    """``train.method`` as (whether SFT comes first, the preference loss in TRL's name or None)."""
    parts = method.split("+")
    return "sft" in parts, next((LOSSES[part] for part in parts if part in LOSSES), None)


def _policy(base_model: Path, parent: Adapter | None, config: TrainSettings):
    """The model to train and the LoRA config a trainer adds to it (None: the parent adapter is trained further)."""
    import datasets
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    torch.set_num_threads(config.threads)
    datasets.disable_progress_bars()  # progress goes to the caller
    transformers_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if parent is not None:
        return PeftModel.from_pretrained(model, parent.path, is_trainable=True), None
    layers = model.config.num_hidden_layers
    top = None if config.lora_layers is None or config.lora_layers >= layers else list(
        range(layers - config.lora_layers, layers))
    return model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules=list(config.target_modules), layers_to_transform=top,
                             task_type="CAUSAL_LM")


def _watch(progress: Progress | None):
    """A callback that reports progress and stops at the first non-finite loss."""
    from transformers import TrainerCallback

    class Watch(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if any(isinstance(v, float) and not math.isfinite(v) for k, v in logs.items() if "loss" in k):
                control.should_training_stop = True
            if progress:
                progress(state.global_step, state.max_steps, logs)

    return Watch()


def best_actions(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each distinct (context, chosen action) of ``pairs`` once, as TRL's prompt-completion rows: what SFT imitates."""
    rows = {json.dumps([p["prompt"], p["chosen"]], sort_keys=True): {"prompt": p["prompt"], "completion": p["chosen"]}
            for p in pairs}
    return list(rows.values())


def _sft_trainer(base_model: Path, tokenizer, parent: Adapter | None, train: list[dict], held: list[dict],
                 config: TrainSettings, work: Path, progress: Progress | None):
    """Supervised fine-tuning of the LoRA on the chosen actions (loss on the action's tokens only)."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    model, peft_config = _policy(base_model, parent, config)
    grouped, per_step, accumulate = _steps(config)
    train, held = best_actions(train), best_actions(held)
    if grouped:
        train, held = by_context(train), by_context(held)
    args = SFTConfig(
        output_dir=str(work / "trainer"), learning_rate=config.learning_rate, num_train_epochs=config.sft_epochs,
        per_device_train_batch_size=per_step, per_device_eval_batch_size=per_step,
        gradient_accumulation_steps=accumulate, max_length=config.max_length,  # fit_context did it
        completion_only_loss=True, packing=False, gradient_checkpointing=False, bf16=config.bf16, use_cpu=True,
        report_to="none", dataloader_num_workers=0, logging_steps=1, save_strategy="no",
        eval_strategy="epoch" if held else "no", seed=config.seed, lr_scheduler_type="cosine", warmup_steps=0.1,
        disable_tqdm=True,
    )
    trainer_class = shared_context_sft_trainer() if config.shared_context else SFTTrainer
    with _quiet_tqdm():
        trainer = trainer_class(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                                train_dataset=Dataset.from_list(train),
                                eval_dataset=Dataset.from_list(held) if held else None,
                                callbacks=[_watch(progress)])
    if grouped:
        trainer.contexts = [context_of(row) for row in train]
    trainer.remove_callback(PrinterCallback)
    return trainer


def _steps(config: TrainSettings) -> tuple[bool, int, int]:
    """Whether the rows of one optimizer update are one packed step (``group_context``), the rows a step takes
    and the steps an update accumulates: the same update either way."""
    grouped = config.shared_context and config.group_context
    if grouped:
        return True, config.batch_size * config.gradient_accumulation, 1
    return False, config.batch_size, config.gradient_accumulation


def _trainer(base_model: Path, tokenizer, parent: Adapter | None, train: list[dict], held: list[dict],
             config: TrainSettings, work: Path, progress: Progress | None, loss: str, warm=None):
    """The preference trainer with TRL's ``loss``; ``warm``: a LoRA model an SFT stage already trained, continued
    here."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    model, peft_config = (warm, None) if warm is not None else _policy(base_model, parent, config)
    grouped, per_step, accumulate = _steps(config)
    args = DPOConfig(
        output_dir=str(work / "trainer"), beta=config.beta,
        loss_type=[loss] + (["sft"] if config.rpo_alpha else []),  # RPO: + NLL of the chosen action
        loss_weights=[1.0, config.rpo_alpha] if config.rpo_alpha else None,
        learning_rate=config.learning_rate, num_train_epochs=passes(config, len(train)),
        per_device_train_batch_size=per_step, per_device_eval_batch_size=per_step,
        gradient_accumulation_steps=accumulate, max_length=config.max_length,  # fit_context did it
        gradient_checkpointing=False, bf16=config.bf16, use_cpu=True, report_to="none", dataloader_num_workers=0,
        logging_steps=1, save_strategy="no", eval_strategy="epoch" if held else "no", seed=config.seed,
        lr_scheduler_type="cosine", warmup_steps=0.1,  # a fraction: 10% of the steps
        disable_tqdm=True,  # progress goes to the caller
        precompute_ref_log_probs=config.precompute_ref, precompute_ref_batch_size=config.ref_batch_size,
    )
    columns = ("prompt", "chosen", "rejected")
    trainer_class = shared_context_trainer() if config.shared_context else DPOTrainer
    if grouped:  # neighbours share their context: the reference pass takes its batches in this order
        train, held = by_context(train), by_context(held)
    with _quiet_tqdm():  # TRL's reference pass draws its own bar; progress goes to the caller
        trainer = trainer_class(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                                train_dataset=Dataset.from_list([{k: p[k] for k in columns} for p in train]),
                                eval_dataset=Dataset.from_list([{k: p[k] for k in columns} for p in held])
                                if held else None, callbacks=[_watch(progress)])
    if grouped:
        trainer.contexts = [context_of(pair) for pair in train]  # the training dataset's order
    trainer.remove_callback(PrinterCallback)  # metrics go to metrics.jsonl and the caller, not stdout
    return trainer


def passes(config: TrainSettings, pairs: int) -> float:
    """``config.epochs``, or more where ``pairs`` make fewer than ``config.min_updates`` optimizer updates in them."""
    per_update = config.batch_size * config.gradient_accumulation
    return max(config.epochs, config.min_updates * per_update / max(pairs, 1))


@contextlib.contextmanager
def _quiet_tqdm():
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before


def context_of(pair: dict[str, Any]) -> str:
    """What a pair shares with others of its kind: its prompt up to the run's own question (the last user
    turn), i.e. the system prompt and the few-shot exemplars."""
    prompt = pair["prompt"]
    question = max((i for i, m in enumerate(prompt) if m["role"] == "user"), default=len(prompt))
    return json.dumps(prompt[:question], sort_keys=True)


def by_context(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pairs ordered so that those sharing a context are neighbours, the most shared contexts first (the
    reference pass takes its batches in this order)."""
    contexts = [context_of(pair) for pair in pairs]
    counts = collections.Counter(contexts)
    order = sorted(range(len(pairs)), key=lambda i: (-counts[contexts[i]], contexts[i]))
    return [pairs[i] for i in order]


class ContextBatches:
    """A training sampler that draws pairs sharing a context into the same batch: each epoch draws the pairs at
    random (seeded), groups each window of ``window`` batches' worth by context, the largest groups first, and
    cuts it into batches; the full batches are shuffled (a short one stays last, where the data loader cuts
    it). Like transformers' group_by_length, with context for length."""

    def __init__(self, contexts: list[str], batch_size: int, seed: int, window: int = 8):
        self.contexts, self.batch_size, self.seed, self.window, self.epoch = contexts, batch_size, seed, window, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.contexts)

    def __iter__(self):
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        drawn = torch.randperm(len(self.contexts), generator=generator).tolist()
        span = self.window * self.batch_size
        ordered = []
        for start in range(0, len(drawn), span):
            groups: dict[str, list[int]] = {}
            for index in drawn[start:start + span]:
                groups.setdefault(self.contexts[index], []).append(index)
            ordered += [i for group in sorted(groups.values(), key=len, reverse=True) for i in group]
        batches = [ordered[i:i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]
        short = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return iter([i for batch in shuffled + short for i in batch])


@dataclass(frozen=True)
class TokenTree:
    """Sequences merged where they share a prefix: each distinct (prefix, next token) is one node, so a
    token shared by several sequences is encoded once. Nodes come after their parents."""

    ids: list[int]  # the token of each node
    positions: list[int]  # each node's position in its sequences (its depth)
    node_of: list[list[int]]  # the node of each token of each sequence

    @classmethod
    def of(cls, sequences: list[list[int]]) -> TokenTree:
        children: dict[tuple[int, int], int] = {}
        ids: list[int] = []
        positions: list[int] = []
        node_of = []
        for sequence in sequences:
            parent, path = -1, []
            for position, token in enumerate(sequence):
                node = children.setdefault((parent, token), len(ids))
                if node == len(ids):
                    ids.append(token)
                    positions.append(position)
                path.append(node)
                parent = node
            node_of.append(path)
        return cls(ids, positions, node_of)

    def sees(self, size: int | None = None):
        """(size, size) booleans, True where a node attends to another: its ancestors and itself (and padding
        nodes beyond the tree to themselves)."""
        import torch

        size = size or len(self.ids)
        allowed = torch.eye(size, dtype=torch.bool)
        for path in self.node_of:
            rows, cols = torch.tril_indices(len(path), len(path))
            nodes = torch.tensor(path)
            allowed[nodes[rows], nodes[cols]] = True
        return allowed


def shared_groups(sequences: list[list[int]], min_share: float = 0.5) -> list[list[int]]:
    """Indices of the sequences, grouped so that each shares at least ``min_share`` of the shorter one's tokens
    with its group's first sequence. One tree per group: packing sequences that share little would only make
    attention cost more (it grows with the square of the tree's size)."""
    groups: list[list[int]] = []
    for index, sequence in enumerate(sequences):
        for group in groups:
            first = sequences[group[0]]
            shared = next((i for i, (a, b) in enumerate(zip(first, sequence, strict=False)) if a != b),
                          min(len(first), len(sequence)))
            if shared >= min_share * min(len(first), len(sequence)):
                group.append(index)
                break
        else:
            groups.append([index])
    return groups


def tree_log_probs(model, input_ids, attention_mask, labels, outputs: tuple[str, ...] = ()):
    """What TRL's fused LM head returns (per-token log-probabilities of the labels, the next-token
    statistics TRL logs), computed on token trees: the rows (DPO's chosen and rejected, or SFT's demonstrations)
    are grouped by shared prefix (a pair's chosen and rejected share their whole prompt), each group is one tree and
    one forward pass (trees differ in size: no padding), so shared tokens are encoded once, and only labelled
    positions are projected onto the vocabulary. Rows must be right-padded."""
    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    device = input_ids.device
    lengths = attention_mask.sum(dim=1).tolist()
    rows_ids = [row[:n] for row, n in zip(input_ids.tolist(), lengths, strict=True)]
    order = sorted(range(len(rows_ids)), key=rows_ids.__getitem__)  # rows sharing a prefix next to each other
    groups = [[order[i] for i in group] for group in shared_groups([rows_ids[i] for i in order])]
    trees = [TokenTree.of([rows_ids[i] for i in group]) for group in groups]
    where = {row: (number, path) for number, (group, tree) in enumerate(zip(groups, trees, strict=True))
             for row, path in zip(group, tree.node_of, strict=True)}  # row -> (its tree, its nodes)
    target = labels[:, 1:]
    label_mask = target != -100
    rows, cols = label_mask.nonzero(as_tuple=True)
    # The token at column c + 1 of a row is predicted from the node that holds the row's token c.
    at = [(where[r][0], where[r][1][c]) for r, c in zip(rows.tolist(), cols.tolist(), strict=True)]
    backbone = getattr(model, model.base_model_prefix)
    parts, label_order = [], []
    for number, tree in enumerate(trees):  # one forward per tree: trees differ in size, padding would cost
        wanted = [k for k, (t, _) in enumerate(at) if t == number]
        if not wanted:
            continue
        size = len(tree.ids)
        bias = torch.full((1, 1, size, size), torch.finfo(model.dtype).min, dtype=model.dtype)
        bias[0, 0].masked_fill_(tree.sees(), 0)
        hidden = backbone(input_ids=torch.tensor([tree.ids], device=device), attention_mask=bias.to(device),
                          position_ids=torch.tensor([tree.positions], device=device),
                          use_cache=False).last_hidden_state[0]
        parts.append(hidden[torch.tensor([at[k][1] for k in wanted], device=device)])
        label_order += wanted
    hidden = torch.cat(parts)[torch.argsort(torch.tensor(label_order, device=device))]  # back in label order
    logits = model.get_output_embeddings()(hidden).float()
    log_softmax = logits.log_softmax(dim=-1)
    picked = log_softmax.gather(1, target[rows, cols, None])[:, 0]

    def spread(values):  # per (row, column) again, zero where nothing is labelled
        return values.new_zeros(target.shape).index_put((rows, cols), values)

    with torch.no_grad():
        extra = {"entropy": lambda: -(log_softmax.exp() * log_softmax).sum(-1),
                 "log_sum_sq_probs": lambda: torch.logsumexp(2 * log_softmax, dim=-1),
                 "mean_logits": lambda: logits.mean(dim=-1),
                 "is_top1": lambda: logits.argmax(dim=-1) == target[rows, cols]}
        stats = {name: spread(make()) if name in outputs else None for name, make in extra.items()}
    loss = -picked.sum() / label_mask.sum().clamp(min=1)
    return FusedCausalLMOutput(loss=loss, log_probs=spread(picked), label_mask=label_mask, **stats)


def share_context(model, outputs: tuple[str, ...]) -> None:
    """Make ``model(..., labels=..., fused_lm_head=True)`` (how TRL's trainers ask for log-probabilities, with
    the adapter on or off) compute them on the packed token tree. Models the tree cannot serve exactly (another
    attention kernel, scaled or capped logits, mixtures of experts) keep TRL's forward. A trainer that adds TRL's
    head again (DPO after an SFT warm start) gets the tree again, with its own ``outputs``."""
    config = model.config.get_text_config()
    scaling = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
    plain = (config._attn_implementation in ("sdpa", "eager") and not getattr(config, "num_experts", None)
             and all(getattr(config, k, None) in (None, 1.0) for k in scaling))
    if not plain or getattr(model.forward, "shares_context", False):
        return
    fused = model.forward  # TRL's fused LM head, which falls back to the model's own forward
    passive = {"inputs_embeds", "output_attentions", "output_hidden_states", "return_dict", "num_items_in_batch"}

    def forward(self, *args, fused_lm_head=False, labels=None, input_ids=None, attention_mask=None, **kwargs):
        extra = {k: v for k, v in kwargs.items() if v is not None and k != "use_cache"}
        right_padded = attention_mask is not None and bool((attention_mask.cummin(dim=1).values
                                                             == attention_mask).all())
        if fused_lm_head and labels is not None and not args and right_padded and not (set(extra) - passive):
            return tree_log_probs(self, input_ids, attention_mask, labels, outputs)
        return fused(*args, fused_lm_head=fused_lm_head, labels=labels, input_ids=input_ids,
                     attention_mask=attention_mask, **kwargs)

    forward.shares_context = True
    model.forward = types.MethodType(forward, model)


class _SharedContext:
    """What strop adds to a TRL trainer: batches drawn by context (``ContextBatches``, where ``contexts`` is set)
    and log-probabilities from the packed token tree (``share_context``) with the statistics it logs."""

    contexts: list[str] | None = None  # set by the trainer's maker: each training row's context, to batch by

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset  # its columns pruned
        if self.contexts is None or len(dataset) != len(self.contexts):
            return super()._get_train_sampler(train_dataset)
        return ContextBatches(self.contexts, self.args.per_device_train_batch_size, self.args.seed)

    def tree_outputs(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _share_context(self):
        from peft import PeftModel

        model = self.accelerator.unwrap_model(self.model)
        share_context(model.get_base_model() if isinstance(model, PeftModel) else model, self.tree_outputs())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._share_context()
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


@functools.cache
def shared_context_trainer():
    """TRL's DPOTrainer whose log-probabilities (policy and reference) come from the packed token tree."""
    from trl import DPOTrainer

    class SharedContextDPOTrainer(_SharedContext, DPOTrainer):
        def tree_outputs(self):
            return ("log_probs", "entropy", "mean_logits", "is_top1") + (
                ("log_sum_sq_probs",) if self.use_weighting else ())

        def compute_ref_log_probs(self, model, inputs):
            self._share_context()
            return super().compute_ref_log_probs(model, inputs)

    return SharedContextDPOTrainer


@functools.cache
def shared_context_sft_trainer():
    """TRL's SFTTrainer whose log-probabilities come from the packed token tree: the demonstrations of one step
    share their system prompt and exemplars, encoded once."""
    from trl import SFTTrainer

    class SharedContextSFTTrainer(_SharedContext, SFTTrainer):
        def tree_outputs(self):
            return ("log_probs", "entropy", "is_top1")  # what SFTTrainer logs

    return SharedContextSFTTrainer


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
    """Loss, reward margin and accuracy per step (train and held-out; an SFT warm start's loss first) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, names in zip(axes, (("loss", "eval_loss", "sft_loss", "sft_eval_loss"),
                                ("rewards/margins", "eval_rewards/margins"),
                                ("rewards/accuracies", "eval_rewards/accuracies")), strict=True):
        for name in names:
            points = [(row["step"], row[name]) for row in history if name in row and "step" in row]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o" if "eval" in name else None,
                        label=("SFT " if name.startswith("sft") else "") + ("held-out" if "eval" in name else "train"))
        ax.set_title(names[0])
        ax.set_xlabel("step")
        if ax.lines:  # SFT alone has no rewards
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _base_checksum(base_model: Path) -> str:
    """The model manifest's own checksum (it lists every weight file's SHA-256)."""
    manifest = base_model / "strop-manifest.json"
    return sha256_file(manifest) if manifest.exists() else ""
