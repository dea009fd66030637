"""DPO with an NLL term on the chosen action (RPO): ``train.rpo_alpha`` adds TRL's sft loss to the preference loss."""

import json
import shutil

import pytest

from strop.training.dpo import train_adapter
from tests.training.test_dpo import BASE, TINY, tiny_llama, write_pairs


@pytest.mark.skipif(not BASE.exists(), reason="the converted model is made by `make setup`")
def test_rpo_alpha_adds_the_chosen_actions_nll_to_the_loss(tmp_path):
    """A small random model with the real tokenizer: at the first step policy and reference are equal, so the DPO
    loss is log 2 either way and the RPO run's loss is larger by alpha times the chosen action's NLL."""
    tiny = tmp_path / "tiny"
    tiny_llama(vocab=49152).save_pretrained(tiny)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (BASE / name).exists():
            shutil.copy(BASE / name, tiny / name)
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=4)
    first = {}
    for alpha in (0.0, 0.5):
        out = tmp_path / f"rpo-{alpha}"
        train_adapter(pairs, tiny, out, TINY.model_copy(update={"held_out": 0.0, "epochs": 1.0, "rpo_alpha": alpha}))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        first[alpha] = next(row for row in rows if "loss" in row)
    assert first[0.0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    nll = -first[0.0]["logps/chosen"]  # summed over the action's tokens: the per-token mean is smaller
    assert 0.6931 + 0.5 * 1.0 < first[0.5]["loss"] < 0.6931 + 0.5 * nll
