"""`strop improve` end to end on the real vLLM and TRL, shrunk to a few prompts so it fits in a test."""

import json
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import strop

pytestmark = pytest.mark.integration

SUITE = """
    name: it-improve
    train_fraction: 0.5
    defaults: {tools: [think, calculator], max_steps: 3, timeout_s: 600}
    cases:
""" + "\n".join(f"      - {{id: c{i}, input: 'What is {a} times {b}?', expect: {{numeric: {a * b}}}}}"
                for i, (a, b) in enumerate([(17, 23), (48, 19), (36, 27), (91, 14), (62, 58), (73, 44), (25, 86),
                                            (39, 67), (54, 32), (88, 71), (13, 97), (45, 45)]))

SMALL = {
    "STROP_IMPROVE__PROMPTS_PER_SUITE": "3", "STROP_IMPROVE__SAMPLES": "3", "STROP_IMPROVE__CHAT_PROMPTS": "0",
    "STROP_IMPROVE__SYNTHETIC_PROMPTS": "0", "STROP_IMPROVE__GATE_LIMIT": "3", "STROP_TRAIN__MIN_PAIRS": "1",
    "STROP_TRAIN__LORA_R": "4", "STROP_TRAIN__TARGET_MODULES": '["q_proj", "v_proj"]', "STROP_TRAIN__BATCH_SIZE": "2",
    "STROP_TRAIN__GRADIENT_ACCUMULATION": "1",
}


def test_one_round_runs_every_stage_and_reports_why(live, tmp_path):
    suite = tmp_path / "it_improve.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    env = {**live.env, **SMALL, "STROP_IMPROVE__SUITES": json.dumps([str(suite)])}
    result = strop("improve", env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "round 1" in result.stdout

    rounds = sorted((Path(live.env["STROP_STATE_DIR"]) / "improve").glob("round-*"))
    done = {p.stem: json.loads(p.read_text()) for p in rounds[-1].glob("*.done")}
    assert set(done) == {"prompts", "rollouts", "critic", "pairs", "train", "gate", "promote"}
    assert done["prompts"]["prompts"] == 3 and done["rollouts"]["episodes"] == 9
    pairs = [json.loads(line) for line in (rounds[-1] / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == done["pairs"]["pairs"]
    for pair in pairs:  # decision-level pairs: the prompt ends where the two actions part
        assert pair["prompt"][0]["role"] == "system" and pair["chosen"] != pair["rejected"]
        assert pair["provenance"]["chosen_score"] - pair["provenance"]["rejected_score"] >= 0.5

    if "skipped" in done["train"]:  # no pairs this time: nothing trained, nothing promoted
        assert "stop" in done["pairs"] and done["promote"] == {"skipped": done["pairs"]["stop"]}
        return
    adapter = Path(live.env["STROP_STATE_DIR"]) / "adapters" / done["train"]["adapter"]
    meta = json.loads((adapter / "strop-adapter.json").read_text())
    assert meta["round"] == 1 and meta["pairs"]["train"] + meta["pairs"]["held_out"] == len(pairs)
    assert done["gate"]["candidate"] == adapter.name and done["gate"]["reason"]
    listed = strop("adapters", "list", env=env)
    assert adapter.name in listed.stdout
    active = json.loads((adapter.parent / "registry.json").read_text())["active"] if (
        adapter.parent / "registry.json").exists() else None
    assert (active == adapter.name) == bool(done["gate"]["promote"]) == (done["promote"]["promoted"] == adapter.name)
