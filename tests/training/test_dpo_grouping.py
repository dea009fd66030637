"""Pairs that share a context trained in the same packed step: every pair once per pass, and the same update
as TRL's accumulation of the pairs one by one."""

import json

import pytest
from safetensors.torch import load_file

from strop.training.dpo import ContextBatches, by_context, context_of, train_adapter
from tests.training.test_dpo import BASE, TINY, tiny_llama


def test_context_batches_draw_every_pair_once_and_put_a_context_in_as_few_batches_as_it_can():
    contexts = ["math"] * 9 + [f"tool {i}" for i in range(13)]  # one shared context, many of their own
    sampler = ContextBatches(contexts, batch_size=4, seed=3, window=8)  # one window: all 22 pairs
    epochs = [list(sampler) for _ in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(22))
        batches = [order[i:i + 4] for i in range(0, 22, 4)]
        assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 2]  # the short batch last, where the loader cuts it
        holding_math = [b for b in batches if any(contexts[i] == "math" for i in b)]
        assert len(holding_math) == 3  # 9 pairs of one context: 4 + 4 + 1, not spread over more batches
        assert sorted(sum(contexts[i] == "math" for i in b) for b in holding_math) == [1, 4, 4]
    assert epochs[0] != epochs[1]  # a new draw each epoch
    again = ContextBatches(contexts, batch_size=4, seed=3)
    assert list(again) == epochs[0]
    again.set_epoch(2)
    assert list(again) == epochs[2]


def test_windows_keep_the_draw_random_across_epochs():
    contexts = ["a", "b"] * 16
    sampler = ContextBatches(contexts, batch_size=2, seed=0, window=2)  # windows of 4 draws
    first, second = list(sampler), list(sampler)
    for order in (first, second):
        assert sorted(order) == list(range(32))
        mixed = sum(contexts[order[i]] != contexts[order[i + 1]] for i in range(0, 32, 2))
        assert mixed <= 8  # at most one batch per window of 4 draws holds two contexts (3 + 1 of them)
    pairs_of = lambda order: {frozenset(order[i:i + 2]) for i in range(0, 32, 2)}  # noqa: E731
    assert pairs_of(first) != pairs_of(second)


def test_pairs_are_ordered_by_their_context_the_most_shared_first():
    def pair(system, question, history=()):
        return {"prompt": [{"role": "system", "content": system}, {"role": "user", "content": "example"},
                           {"role": "assistant", "content": "its action"}, {"role": "user", "content": question},
                           *history],
                "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}

    after_a_call = [{"role": "assistant", "content": "call"}, {"role": "tool", "content": "42"}]
    pairs = [pair("tools B", "1"), pair("math", "2"), pair("tools A", "3"), pair("math", "4", after_a_call),
             pair("math", "5")]
    assert context_of(pairs[1]) == context_of(pairs[3]) != context_of(pairs[0])  # the question's history aside
    assert [p["prompt"][3]["content"] for p in by_context(pairs)] == ["2", "4", "5", "3", "1"]


def context_pairs(path, n=4):
    """Pairs under two system prompts, as a round's suites give them."""
    rows = []
    for i in range(n):
        system = ("Solve with the calculator." if i % 2 else "Call the declared function.") + " Rules: " * 8
        rows.append({"prompt": [{"role": "system", "content": system},
                                {"role": "user", "content": f"What is {100 + i} plus {7 * i}?"}],
                     "chosen": [{"role": "assistant", "content": json.dumps({"tool": "calculator",
                                                                             "args": {"expression": f"{i} + 1"}})}],
                     "rejected": [{"role": "assistant", "content": json.dumps({"tool": "final_answer",
                                                                               "args": {"answer": str(i + 9)}})}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.skipif(not BASE.exists(), reason="the converted model is made by `make setup`")
def test_a_packed_update_is_the_update_trl_accumulates_pair_by_pair(tmp_path):
    """A small random model with the real tokenizer: one packed step of the update's 4 pairs (sharing their
    contexts in token trees) moves the adapter exactly as TRL's 4 accumulated steps of one pair each."""
    import shutil

    tiny = tmp_path / "tiny"
    tiny_llama(vocab=49152).save_pretrained(tiny)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (BASE / name).exists():
            shutil.copy(BASE / name, tiny / name)
    pairs = context_pairs(tmp_path / "pairs.jsonl")
    settings = TINY.model_copy(update={"batch_size": 1, "gradient_accumulation": 4, "held_out": 0.0, "epochs": 3.0,
                                       "learning_rate": 5e-3, "lora_dropout": 0.0, "max_length": 128})
    losses, weights = {}, {}
    for name, update in (("trl", {"shared_context": False, "precompute_ref": False}), ("strop", {})):
        train_adapter(pairs, tiny, tmp_path / name, settings.model_copy(update=update))
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [row["loss"] for row in rows if "loss" in row]
        weights[name] = load_file(tmp_path / name / "adapter_model.safetensors")
    assert len(losses["strop"]) == len(losses["trl"]) == 3  # one optimizer update per pass either way
    assert losses["strop"] == pytest.approx(losses["trl"], rel=1e-4, abs=1e-5)
    moved = [k for k, v in weights["trl"].items() if "lora_B" in k and v.abs().max() > 1e-4]
    assert moved  # the updates did something to compare
    for key, value in weights["trl"].items():
        diff = (weights["strop"][key] - value).abs().max().item()
        assert diff <= 1e-4 + 1e-3 * value.abs().max().item(), key


def test_in_bfloat16_the_tree_gives_what_trl_separate_sequences_give_in_bfloat16():
    """Under autocast (train.bf16) the packed tree computes in bfloat16 what TRL's separate sequences compute in
    bfloat16, and both stay near float32's log-probabilities."""
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from strop.training.dpo import share_context

    prompt, answers = [3, 4, 5, 6, 7, 8, 9, 10], [[11, 12, 13], [14, 15]]
    rows = [prompt + a for a in answers]
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :len(prompt)] = -100
    results = {}
    for packed, bf16 in ((False, False), (False, True), (True, True)):
        model = tiny_llama()
        add_fused_lm_head(model, outputs=("log_probs",))
        if packed:
            share_context(model, ("log_probs",))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True,
                        use_cache=False)
        results[packed, bf16] = out.log_probs.detach().float()
    assert not torch.equal(results[False, True], results[False, False])  # bfloat16 did change the arithmetic
    torch.testing.assert_close(results[True, True], results[False, True], atol=1e-3, rtol=0)
    torch.testing.assert_close(results[True, True], results[False, False], atol=1e-1, rtol=0)
