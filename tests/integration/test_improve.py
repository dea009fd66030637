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
      # a gate case no answer passes: the suite is never solved (improve.skip_solved), so rounds draw from it
      - {id: never, input: 'What is 2 + 2?', expect: {numeric: 0.123457}, split: gate}
""" + "\n".join(f"      - {{id: c{i}, input: 'What is {a} times {b}?', expect: {{numeric: {a * b}}}}}"
                for i, (a, b) in enumerate([(17, 23), (48, 19), (36, 27), (91, 14), (62, 58), (73, 44), (25, 86),
                                            (39, 67), (54, 32), (88, 71), (13, 97), (45, 45)]))

SMALL = {
    "STROP_IMPROVE__PROMPTS_PER_SUITE": "3", "STROP_IMPROVE__SAMPLES": "3", "STROP_IMPROVE__CHAT_PROMPTS": "0",
    "STROP_IMPROVE__SYNTHETIC_PROMPTS": "0", "STROP_IMPROVE__GATE_LIMIT": "3", "STROP_TRAIN__MIN_PAIRS": "1",
    "STROP_TRAIN__LORA_R": "4", "STROP_TRAIN__TARGET_MODULES": '["q_proj", "v_proj"]', "STROP_TRAIN__BATCH_SIZE": "2",
    "STROP_TRAIN__GRADIENT_ACCUMULATION": "1",
}


def small(live, tmp_path) -> dict[str, str]:
    """The live server's variables with a round shrunk to three prompts of a twelve-case suite."""
    suite = tmp_path / "it_improve.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    return {**live.env, **SMALL, "STROP_IMPROVE__SUITES": json.dumps([str(suite)])}


def test_one_round_runs_every_stage_and_reports_why(live, tmp_path):
    env = {**small(live, tmp_path), "STROP_IMPROVE__SKIP_SOLVED": "true"}
    result = strop("improve", env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "round 1" in result.stdout

    rounds = sorted((Path(live.env["STROP_STATE_DIR"]) / "improve").glob("round-*"))
    done = {p.stem: json.loads(p.read_text()) for p in rounds[-1].glob("*.done")}
    assert set(done) == {"prompts", "rollouts", "critic", "pairs", "train", "gate", "promote"}
    assert done["prompts"]["solved"] == []  # the gate's current side ran first: the case `never` failed
    assert done["gate"]["runs"]["current"] == (rounds[-1] / "gate-current.run").read_text().strip()
    prompts = (rounds[-1] / "prompts.jsonl").read_text().splitlines()  # 3, plus more drawn when few were informative
    assert done["prompts"]["prompts"] == 3 and 3 <= len(prompts) == sum(done["rollouts"]["drawn"].values()) <= 6
    assert done["rollouts"]["episodes"] == 3 * len(prompts)
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


@pytest.mark.timeout(2400)
def test_the_demo_survives_kill_9_at_every_stage_and_reports(live, tmp_path):
    """`strop demo` killed during the baseline, the rollouts, training and the gate, then run again each time."""
    import os
    import signal
    import subprocess
    import sys
    import time

    state = tmp_path / "state"  # a state folder of its own, reaching the session's server by URL
    env = {**small(live, tmp_path), "STROP_STATE_DIR": str(state),
           "STROP_LLM_URL": f"http://{live.record.host}:{live.record.port}/v1", "STROP_LLM_MODEL": live.record.model,
           "STROP_LLM_API_KEY": live.record.api_key}
    sizes = ["--prompts", "3", "--samples", "3", "--gate-limit", "3", "--suite", str(tmp_path / "it_improve.yaml")]
    improve = state / "improve" / "round-0001"
    kill_points = {  # in the order a round reaches them
        "baseline": lambda: any(p.stat().st_size for p in (state / "eval").glob("*/results.jsonl")),
        "rollouts": lambda: (improve / "rollouts.jsonl").exists(),
        "training": lambda: any((state / "adapters").glob(".*.partial")),
        "gate": lambda: (improve / "gate-candidate.run").exists(),
    }
    killed = []
    for name, reached in kill_points.items():
        log = (tmp_path / f"{name}.log").open("w")
        process = subprocess.Popen([sys.executable, "-m", "strop", "demo", *sizes], env={**os.environ, **env},
                                   stdout=log, stderr=log)
        while process.poll() is None and not reached():
            time.sleep(0.2)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed.append(name)
        assert process.returncode in (0, -signal.SIGKILL), (tmp_path / f"{name}.log").read_text()[-3000:]
        if name == "baseline":
            baseline = (improve / "gate-current.run").read_text()
    result = strop("demo", *sizes, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert killed[:2] == ["baseline", "rollouts"]  # the later points exist only when the round trains

    done = {p.stem: json.loads(p.read_text()) for p in improve.glob("*.done")}
    assert set(done) == {"prompts", "rollouts", "critic", "pairs", "train", "gate", "promote"}
    rollouts = [json.loads(line) for line in (improve / "rollouts.jsonl").read_text().splitlines()]
    assert sorted((r["prompt"], r["k"]) for r in rollouts) == sorted({(r["prompt"], r["k"]) for r in rollouts})
    prompts = (improve / "prompts.jsonl").read_text().splitlines()
    assert len(rollouts) == done["rollouts"]["episodes"] == 3 * len(prompts)  # none lost to a kill, none run twice
    assert not list((state / "adapters").glob(".*.partial"))
    if "skipped" in done["gate"]:
        return
    assert done["gate"]["runs"]["current"] == baseline  # the baseline evaluation is the gate's current side
    report = (state / "demo" / "round-0001.md").read_text()
    assert "| suite | cases | A | B |" in report and (state / "demo" / "round-0001.png").stat().st_size > 1000
