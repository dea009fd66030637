"""The SFT warm start (``train.method = sft | sft+dpo``): TRL's SFTTrainer on the chosen actions, then DPO on the same
LoRA, against a reference that stays the model without the adapter (the current policy)."""

import json
import shutil

import pytest

from strop.serving.adapters import Registry
from strop.training.dpo import best_actions, stages, train_adapter
from tests.training.test_dpo import BASE, TINY, tiny_llama, write_pairs


def test_the_method_names_its_stages():
    assert stages("dpo") == (False, "sigmoid") and stages("ipo") == (False, "ipo")
    assert stages("sft") == (True, None)
    assert stages("sft+dpo") == (True, "sigmoid") and stages("sft+ipo") == (True, "ipo")


def test_sft_imitates_each_distinct_chosen_action_once():
    pair = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    other = pair | {"rejected": [{"role": "assistant", "content": "c"}]}  # the same best episode, another loser
    assert best_actions([pair, other]) == [{"prompt": pair["prompt"], "completion": pair["chosen"]}]


@pytest.fixture
def tiny(tmp_path):
    """A small random model with the real tokenizer (stands in for the 135M model: only the training path matters)."""
    path = tmp_path / "tiny"
    tiny_llama(vocab=49152).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (BASE / name).exists():
            shutil.copy(BASE / name, path / name)
    return path


def rows(adapter) -> list[dict]:
    return [json.loads(line) for line in (adapter / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not BASE.exists(), reason="the converted model is made by `make setup`")
def test_sft_then_dpo_trains_one_adapter_and_dpo_starts_from_what_sft_made(tmp_path, tiny):
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=4)
    config = TINY.model_copy(update={"held_out": 0.0, "epochs": 1.0, "learning_rate": 5e-3})

    plain = train_adapter(pairs, tiny, tmp_path / "adapters" / "v1", config)
    first_plain = next(row for row in rows(tmp_path / "adapters" / "v1") if "loss" in row)
    assert "sft_loss" not in plain["metrics"] and first_plain["loss"] == pytest.approx(0.6931, abs=1e-3)

    meta = train_adapter(pairs, tiny, tmp_path / "adapters" / "v2",
                         config.model_copy(update={"method": "sft+dpo", "sft_epochs": 3.0}))
    logged = rows(tmp_path / "adapters" / "v2")
    sft = [row for row in logged if "sft_loss" in row]
    dpo = [row for row in logged if "loss" in row]
    assert sft and dpo and sft[-1]["sft_loss"] < sft[0]["sft_loss"]  # the chosen actions got likelier
    assert min(row["step"] for row in dpo) > max(row["step"] for row in sft)  # one curve, SFT first
    # DPO continues the SFT adapter (its chosen actions start likelier than in the plain run) against a frozen
    # copy of it as the reference (its first loss is log 2, no reward yet).
    assert dpo[0]["logps/chosen"] > first_plain["logps/chosen"]
    assert dpo[0]["loss"] == pytest.approx(0.6931, abs=1e-3) and dpo[0]["rewards/chosen"] == pytest.approx(0, abs=1e-4)
    assert meta["config"]["method"] == "sft+dpo" and "sft_loss" in meta["metrics"] and "loss" in meta["metrics"]
    assert [a.name for a in Registry(tmp_path / "adapters").adapters()] == ["v1", "v2"]


@pytest.mark.skipif(not BASE.exists(), reason="the converted model is made by `make setup`")
def test_sft_alone_saves_an_adapter_without_preference_metrics(tmp_path, tiny):
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=4)
    meta = train_adapter(pairs, tiny, tmp_path / "v1", TINY.model_copy(update={"method": "sft", "epochs": 1.0}))
    assert "sft_loss" in meta["metrics"] and "sft_eval_loss" in meta["metrics"] and "loss" not in meta["metrics"]
    assert (tmp_path / "v1" / "adapter_model.safetensors").exists() and (tmp_path / "v1" / "training.png").exists()


@pytest.mark.skipif(not BASE.exists(), reason="the converted model is made by `make setup`")
def test_packed_sft_trains_as_trl_does_and_encodes_each_step_as_token_trees(tmp_path, tiny, monkeypatch):
    """TRL's own SFT and strop's (each step's demonstrations in one token tree) log the same losses and token
    statistics, step after step."""
    from strop.training import dpo

    trees = []
    real = dpo.tree_log_probs
    monkeypatch.setattr(dpo, "tree_log_probs", lambda *args, **kw: trees.append(args[1].shape) or real(*args, **kw))
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=6)
    config = TINY.model_copy(update={"method": "sft", "held_out": 0.0, "sft_epochs": 2.0, "learning_rate": 5e-3})
    logged = {}
    for name, update in (("trl", {"shared_context": False}), ("strop", {"group_context": False})):
        train_adapter(pairs, tiny, tmp_path / name, config.model_copy(update=update))
        logged[name] = [row for row in rows(tmp_path / name) if "sft_loss" in row]
        assert len(trees) == (0 if name == "trl" else 6)  # 3 steps of 2 demonstrations a pass
    assert len(logged["trl"]) == 6 and logged["trl"][-1]["sft_loss"] < logged["trl"][0]["sft_loss"]
    for trl_row, strop_row in zip(logged["trl"], logged["strop"], strict=True):
        for key in ("sft_loss", "sft_entropy", "sft_mean_token_accuracy"):
            assert strop_row[key] == pytest.approx(trl_row[key], rel=1e-3, abs=1e-4), key
