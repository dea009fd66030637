"""Preference training with the real model and TRL; the kill test checks no half-trained adapter is ever listed."""

import json
import math
import shutil
import signal
import subprocess
import sys
import time

import pytest

from strop.config import TrainSettings
from strop.errors import StropError
from strop.serving.adapters import Registry
from strop.training.dpo import (
    TrainingDiverged,
    _check_finite,
    fit_context,
    passes,
    read_pairs,
    split_held_out,
    train_adapter,
)
from tests.conftest import REPO

BASE = REPO / ".strop" / "models" / "SmolLM2-135M-Instruct"
# the plain preference loss (rpo_alpha 0), whose first value is log 2: tests/training/test_rpo.py adds the NLL term;
# float32 on every CPU, so the figures compared with TRL's are exact (bfloat16 is tested on its own)
TINY = TrainSettings(batch_size=2, gradient_accumulation=1, max_length=96, min_pairs=4, held_out=0.2, lora_r=4,
                     lora_alpha=8, target_modules=["q_proj", "v_proj"], rpo_alpha=0.0, bf16=False)


def write_pairs(path, n=6):
    rows = []
    for i in range(n):
        a, b = 100 + i, 200 + 3 * i
        rows.append({"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
                     "chosen": [{"role": "assistant", "content": json.dumps({"tool": "calculator",
                                                                             "args": {"expression": f"{a} + {b}"}})}],
                     "rejected": [{"role": "assistant", "content": json.dumps({"tool": "final_answer",
                                                                               "args": {"answer": str(a + b + 7)}})}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_too_few_pairs_train_nothing(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=3)
    with pytest.raises(StropError, match="Only 3 preference pairs"):
        train_adapter(pairs, BASE, tmp_path / "adapters" / "v1", TINY)
    assert not (tmp_path / "adapters").exists() or not list((tmp_path / "adapters").iterdir())


def test_a_malformed_pair_is_named_by_line(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=2)
    pairs.write_text(pairs.read_text() + '{"prompt": [], "chosen": "x"}\n')
    with pytest.raises(StropError, match=r"pairs.jsonl:3: not a preference pair"):
        read_pairs(pairs)


def test_held_out_slice_is_stable_and_never_empty():
    pairs = [{"prompt": [{"role": "user", "content": str(i)}], "chosen": [i], "rejected": [0]} for i in range(50)]
    train, held = split_held_out(pairs, 0.2)
    assert (train, held) == split_held_out(list(pairs), 0.2)
    assert 3 <= len(held) <= 20 and len(train) + len(held) == 50
    assert len(split_held_out(pairs[:2], 0.01)[1]) == 1
    assert split_held_out(pairs, 0.0)[1] == []


def test_long_contexts_lose_their_oldest_exemplars_first():
    def block(name):  # one few-shot exemplar: a user turn and the actions that answered it
        return [{"role": "user", "content": name}, {"role": "assistant", "content": f"{name} action"}]

    prompt = [{"role": "system", "content": "rules"}, *block("ex1"), *block("ex2"), *block("ex3"),
              {"role": "user", "content": "question"}, {"role": "tool", "content": "result"}]
    pair = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "good long"}],
            "rejected": [{"role": "assistant", "content": "bad"}]}
    words = lambda messages: sum(len(m["content"].split()) for m in messages)  # stands in for the tokenizer  # noqa: E731

    assert fit_context([pair], words, 100) == ([pair], 0)
    (fitted,), dropped = fit_context([pair], words, words(prompt) + 2 - 3)  # one exemplar too many
    assert dropped == 0 and [m["content"] for m in fitted["prompt"]] == [
        "rules", "ex2", "ex2 action", "ex3", "ex3 action", "question", "result"]
    (fitted,), _ = fit_context([pair], words, 9)
    assert [m["content"] for m in fitted["prompt"]] == ["rules", "ex3", "ex3 action", "question", "result"]
    assert fit_context([pair], words, 7) == ([], 1)  # the nearest exemplar and the question never go


def test_a_diverging_loss_stops_with_a_clear_error():
    _check_finite([{"loss": 0.7, "step": 1}])
    with pytest.raises(TrainingDiverged, match="loss became nan at step 2"):
        _check_finite([{"loss": 0.7, "step": 1}, {"loss": math.nan, "step": 2}])


@pytest.mark.skipif(not BASE.exists(), reason="the converted model is made by `make setup`")
def test_killed_training_leaves_no_adapter_and_a_rerun_trains_one(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    adapters = tmp_path / "adapters"
    script = (f"from pathlib import Path; from strop.training.dpo import train_adapter; "
              f"from tests.training.test_dpo import TINY, BASE; "
              f"train_adapter(Path({str(pairs)!r}), BASE, Path({str(adapters / 'v1')!r}), TINY)")
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    partial = adapters / ".v1.partial"
    deadline = time.time() + 300
    while not partial.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # into model loading or training
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert Registry(adapters).adapters() == []  # the partial folder is never offered

    steps = []
    meta = train_adapter(pairs, BASE, adapters / "v1", TINY, progress=lambda s, n, logs: steps.append((s, n)))
    [adapter] = Registry(adapters).adapters()
    assert adapter.name == "v1" and not partial.exists()
    assert {"adapter_config.json", "adapter_model.safetensors", "strop-adapter.json", "metrics.jsonl",
            "training.png"} <= {p.name for p in adapter.path.iterdir()}
    assert meta["parent"] is None and len(meta["data_checksum"]) == 64 and meta["base_checksum"]
    assert meta["pairs"]["train"] + meta["pairs"]["held_out"] == 6 and meta["config"]["method"] == "dpo"
    assert math.isfinite(meta["metrics"]["loss"]) and "eval_loss" in meta["metrics"]
    assert steps and steps[-1][0] == steps[-1][1]

    child_meta = train_adapter(pairs, BASE, adapters / "v2", TINY.model_copy(update={"method": "ipo"}), parent=adapter)
    assert child_meta["parent"] == "v1" and Registry(adapters).lineage("v2") == ["v2", "v1"]


@pytest.mark.skipif(not BASE.exists(), reason="the converted model is made by `make setup`")
def test_lora_on_the_top_layers_trains_and_saves_those_layers_alone(tmp_path):
    from safetensors import safe_open
    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(BASE).num_hidden_layers
    out = tmp_path / "adapters" / "v1"
    meta = train_adapter(write_pairs(tmp_path / "pairs.jsonl"), BASE, out, TINY.model_copy(update={"lora_layers": 2}))
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as weights:
        names = weights.keys()
    trained = {int(name.split(".layers.")[1].split(".")[0]) for name in names}
    assert trained == {layers - 2, layers - 1} and math.isfinite(meta["metrics"]["loss"])


# -- packed token trees: the same log-probabilities, every pair kept ---------------------------------------
def test_a_token_tree_encodes_each_shared_prefix_once_and_each_node_sees_only_its_ancestors():
    from strop.training.dpo import TokenTree

    tree = TokenTree.of([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 7]])
    assert len(tree.ids) == 7  # 1 2 3 shared, then 4 | 5 6 | 7
    assert [[tree.ids[n] for n in path] for path in tree.node_of] == [[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 7]]
    assert [[tree.positions[n] for n in path] for path in tree.node_of] == [[0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1]]
    sees = tree.sees()
    six, four, seven = tree.node_of[1][4], tree.node_of[0][3], tree.node_of[2][1]
    assert {n for n in range(7) if sees[six, n]} == set(tree.node_of[1])
    assert not sees[six, four] and not sees[four, six] and not sees[seven, tree.node_of[0][1]]


def test_grouping_keeps_every_sequence_once_and_joins_those_that_share_most_of_their_tokens():
    from strop.training.dpo import shared_groups

    context = list(range(100))
    sequences = [context + [1000], [5, 6, 7], context + [2000, 2001], context[:10] + [3000] * 90, [5, 6, 8]]
    groups = shared_groups(sequences)
    assert sorted(i for g in groups for i in g) == list(range(len(sequences)))
    assert 0 in groups[0] and 2 in groups[0] and 3 not in groups[0]
    assert any({1, 4} <= set(g) for g in groups)


def tiny_llama(vocab=64, **extra):
    """A random two-layer Llama: stands in for the real model where only the arithmetic of packing matters."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **extra)
    return LlamaForCausalLM(config).float()


def test_the_tree_gives_the_log_probabilities_and_gradients_of_separate_sequences():
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from strop.training.dpo import share_context

    stats = ("log_probs", "entropy", "mean_logits", "is_top1")
    prompts = [[3, 4, 5, 6, 7, 8], [3, 4, 5, 9]]  # two pairs sharing part of their context
    chosen, rejected = [[10, 11, 12], [13]], [[10, 14], [15, 16, 17, 18]]
    rows = [p + c for p, c in zip(prompts, chosen, strict=True)] + [p + r for p, r in zip(prompts, rejected,
                                                                                           strict=True)]
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    for row, prompt in enumerate(prompts * 2):
        labels[row, :len(prompt)] = -100

    results = {}
    for packed in (False, True):
        model = tiny_llama()
        add_fused_lm_head(model, outputs=stats)
        if packed:
            share_context(model, stats)
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True,
                    use_cache=False)
        (out.log_probs.sum(dim=1) * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results[packed] = (out, grads)
    (plain, plain_grads), (tree, tree_grads) = results[False], results[True]
    assert (plain.log_probs != 0).sum() == 10  # every answer token is scored
    for name in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(tree, name), getattr(plain, name), atol=1e-5, rtol=1e-5)
    assert torch.equal(tree.is_top1, plain.is_top1)
    torch.testing.assert_close(tree_grads, plain_grads, atol=1e-5, rtol=1e-4)


def test_models_the_tree_cannot_serve_exactly_keep_trl_forward():
    from trl.trainer.utils import add_fused_lm_head

    from strop.training.dpo import share_context

    model = tiny_llama(attn_implementation="sdpa")
    model.config.final_logit_softcapping = 30.0  # the tree's head does not cap logits
    add_fused_lm_head(model)
    before = model.forward
    share_context(model, ("log_probs",))
    assert model.forward is before


def test_training_settings_validate():
    from pydantic import ValidationError

    assert TrainSettings().shared_context and TrainSettings().precompute_ref
    with pytest.raises(ValidationError, match="ref_batch_size"):
        TrainSettings(ref_batch_size=0)


def tiny_with_tokenizer(path):
    """A small random model with SmolLM2's real tokenizer."""
    tiny_llama(vocab=49152).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (BASE / name).exists():
            shutil.copy(BASE / name, path / name)
    return path


@pytest.mark.skipif(not BASE.exists(), reason="the converted model is made by `make setup`")
def test_the_packed_precomputed_reference_trains_as_trl_does(tmp_path):
    """A small random model with the real tokenizer: TRL's own path and strop's (token tree, reference computed
    once) log the same losses, rewards and log-probabilities, step after step."""
    tiny = tiny_with_tokenizer(tmp_path / "tiny")
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=6)
    settings = TINY.model_copy(update={"held_out": 0.0, "epochs": 2.0, "learning_rate": 5e-3})
    logged = {}
    for name, update in (("trl", {"shared_context": False, "precompute_ref": False}),
                         ("strop", {"group_context": False})):  # the same pairs in each step as TRL draws them
        meta = train_adapter(pairs, tiny, tmp_path / name, settings.model_copy(update=update))
        assert meta["pairs"]["train"] == 6
        logged[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    keys = ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")
    steps = [row for row in logged["trl"] if "loss" in row]
    assert len(steps) == 6 and any(abs(row["rewards/margins"]) > 1e-4 for row in steps)  # the adapter moved
    for trl_row, strop_row in zip(steps, [row for row in logged["strop"] if "loss" in row], strict=True):
        for key in keys:
            assert strop_row[key] == pytest.approx(trl_row[key], rel=1e-3, abs=1e-4), key


@pytest.mark.skipif(not BASE.exists(), reason="the converted model is made by `make setup`")
def test_a_few_pairs_get_more_passes_up_to_min_updates(tmp_path):
    tiny = tiny_with_tokenizer(tmp_path / "tiny")
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=6)  # batch 2: 3 updates a pass
    settings = TINY.model_copy(update={"held_out": 0.0, "epochs": 1.0, "min_updates": 7})
    assert passes(settings.model_copy(update={"min_updates": 0}), 6) == 1.0
    meta = train_adapter(pairs, tiny, tmp_path / "v1", settings)
    logged = [json.loads(line) for line in (tmp_path / "v1" / "metrics.jsonl").read_text().splitlines()]
    assert meta["passes"] == pytest.approx(7 * 2 / 6)
    assert len([row for row in logged if "loss" in row]) == 7  # ceil(3 updates x 2.33 passes)
