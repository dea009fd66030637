"""`strop critic calibrate` end to end on the real vLLM server: the shape of its table and JSON report."""

import json

import pytest

from tests.integration.conftest import strop

pytestmark = pytest.mark.integration


def test_calibrate_reports_agreement_per_file_and_category(live, tmp_path):
    result = strop("critic", "calibrate", "--limit", "4", "--concurrency", "4", "--json", str(tmp_path / "c.json"),
                   env={**live.env, "COLUMNS": "120"}, timeout=1500)  # a busy 2-core machine is slow
    assert result.returncode == 0, result.stderr
    assert "vs human labels" in result.stdout
    assert "hhh_pairs" in result.stdout and "truthfulqa_pairs" in result.stdout
    figures = json.loads((tmp_path / "c.json").read_text())
    assert figures["all"]["n"] == 8 and len(figures["pairs"]) == 8
    assert set(figures["files"]) == {"hhh_pairs.jsonl", "truthfulqa_pairs.jsonl"}
    assert figures["machine"]["cores"] and figures["seconds"] > 0  # a timing is comparable only beside its machine
    for file in figures["files"].values():
        assert file["n"] == 4 and sum(c["n"] for c in file["categories"].values()) == 4
        assert file["agree"] + file["disagree"] + file["ties"] == 4
    assert figures["all"]["failed"] == 0, [p["reasoning"] for p in figures["pairs"] if p["source"] == "none"]
    assert figures["all"]["logprobs"] == 8  # vLLM gives logprobs: every verdict is read from them
    assert all(0.0 <= p["p_a"] <= 1.0 and p["verdict"] in ("agree", "disagree", "tie") for p in figures["pairs"])
