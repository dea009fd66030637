"""Preference training with the real model and TRL; the kill test checks no half-trained adapter is ever listed."""

import json
import math
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
    read_pairs,
    split_held_out,
    train_adapter,
)
from tests.conftest import REPO

BASE = REPO / ".strop" / "models" / "SmolLM2-135M-Instruct"
TINY = TrainSettings(batch_size=2, gradient_accumulation=1, max_length=96, min_pairs=4, held_out=0.2, lora_r=4,
                     lora_alpha=8, target_modules=["q_proj", "v_proj"])


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
    assert meta["pairs"]["train"] + meta["pairs"]["held_out"] == 6 and meta["config"]["loss"] == "dpo"
    assert math.isfinite(meta["metrics"]["loss"]) and "eval_loss" in meta["metrics"]
    assert steps and steps[-1][0] == steps[-1][1]

    child_meta = train_adapter(pairs, BASE, adapters / "v2", TINY.model_copy(update={"loss": "ipo"}), parent=adapter)
    assert child_meta["parent"] == "v1" and Registry(adapters).lineage("v2") == ["v2", "v1"]
