"""`strop eval` end to end on the real vLLM server: grading, reports, comparison, interruption and resume."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.integration.conftest import ctrl_c_enabled, strop

pytestmark = pytest.mark.integration

SUITE = """
    name: it-eval
    defaults: {tools: [think, calculator], max_steps: 3, timeout_s: 300}
    cases:
      - {id: product, input: "What is 1234 * 5678?", expect: {numeric: 7006652}, tags: [calc]}
      - {id: sum, input: "What is 161 plus 390?", expect: {numeric: 551}, tags: [calc]}
      - {id: judged, input: "What is the capital of France?", expect: {judge: "Names Paris."}}
      - {id: broken, input: "What is 2 + 2?", expect: {numerik: 4}}
"""


def write_suite(tmp_path: Path) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(SUITE))
    return path


def run_ids(env) -> list[str]:
    state = Path(env["STROP_STATE_DIR"]) / "eval"
    return sorted(p.parent.name for p in state.glob("*/run.json"))


def test_eval_grades_reports_links_trajectories_and_compares(live, tmp_path):
    suite = write_suite(tmp_path)
    result = strop("eval", str(suite), "--json", str(tmp_path / "a.json"), "--md", str(tmp_path / "a.md"),
                   env=live.env)
    assert result.returncode == 0, result.stderr
    assert "it-eval" in result.stdout and "pass@1" in result.stdout
    assert "unknown grader 'numerik'" in result.stderr  # the broken case is reported, the rest ran
    report = json.loads((tmp_path / "a.json").read_text())
    results = {r["case"]: r for r in report["results"]}
    assert set(results) == {"product", "sum", "judged"}
    assert all(r["status"] in ("passed", "failed") for r in results.values()), results
    judge = results["judged"]["grades"][0]
    assert judge["grader"] == "judge" and 0.0 <= judge["score"] <= 1.0
    assert any("numerik" in line for line in report["unfinished"])
    assert "| it-eval |" in (tmp_path / "a.md").read_text()
    shown = strop("trajectories", "show", results["product"]["trajectory"], "--json", env=live.env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["case_id"] == "product"

    again = strop("eval", str(suite), "--limit", "2", env=live.env)
    assert again.returncode == 0, again.stderr
    first, second = run_ids(live.env)[-2:]
    compared = strop("eval", "compare", first, second, "--png", str(tmp_path / "cmp.png"), env=live.env)
    assert compared.returncode == 0, compared.stderr
    assert "it-eval" in compared.stdout and "95% CI" in compared.stdout
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    listed = strop("eval", "runs", env=live.env)
    assert first in listed.stdout and second in listed.stdout


def test_a_suite_below_its_threshold_exits_non_zero(live, tmp_path):
    suite = tmp_path / "strict.yaml"
    suite.write_text("name: strict\nthreshold: 0.5\ndefaults: {max_steps: 2}\ncases:\n"
                     "  - {input: 'What is 2 + 2?', expect: {exact: 'an answer no model gives'}}\n")
    result = strop("eval", str(suite), env=live.env)
    assert result.returncode == 1, result.stderr
    assert "below threshold: strict" in result.stderr and "strict ✗ <50%" in result.stdout


def test_interrupted_eval_keeps_finished_cases_and_resumes(live, tmp_path):
    suite = write_suite(tmp_path)
    before = set(run_ids(live.env))
    process = subprocess.Popen([sys.executable, "-m", "strop", "eval", str(suite), "--concurrency", "1"],
                               env={**__import__("os").environ, **live.env}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_enabled)
    results = None
    deadline = time.time() + 400
    while time.time() < deadline and process.poll() is None:
        new = set(run_ids(live.env)) - before
        if new:
            results = Path(live.env["STROP_STATE_DIR"]) / "eval" / new.pop() / "results.jsonl"
            if results.exists() and results.read_text().count("\n") >= 1:
                break
        time.sleep(0.5)
    assert results is not None and process.poll() is None, "the run finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr
    kept = [json.loads(line) for line in results.read_text().splitlines()]
    assert 1 <= len(kept) < 3

    resumed = strop("eval", "--resume", results.parent.name, env=live.env)
    assert resumed.returncode == 0, resumed.stderr
    final = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["case"] for r in final) == ["judged", "product", "sum"]  # each case exactly once
    assert final[:len(kept)] == kept
