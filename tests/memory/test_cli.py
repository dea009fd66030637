"""The memory command line: help with examples, ingest/search/stats/export/delete round trip, clear errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from strop.memory.cli import memory_app

runner = CliRunner()
COMMANDS = ["ingest", "search", "stats", "delete", "export", "bench-retrieval"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command):
    result = runner.invoke(memory_app, [command, "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and f"strop memory {command}" in result.output


def test_ingest_search_stats_export_delete_round_trip(tmp_path, monkeypatch, corpus_file):
    monkeypatch.setenv("STROP_STATE_DIR", str(tmp_path / "state"))
    result = runner.invoke(memory_app, ["ingest", str(corpus_file), "-n", "docs", "--id-field", "doc_id", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["added"] == 6
    result = runner.invoke(memory_app, ["search", "capital of France", "-n", "docs", "--json", "--k", "2"])
    hits = json.loads(result.stdout)
    assert result.exit_code == 0 and hits[0]["doc_id"] == "paris" and len(hits) == 2
    assert json.loads(runner.invoke(memory_app, ["stats", "--json"]).stdout)["namespaces"] == {"docs": 6}
    exported = [json.loads(line) for line in runner.invoke(memory_app, ["export", "-n", "docs"]).stdout.splitlines()]
    assert len(exported) == 6 and all(row["namespace"] == "docs" for row in exported)
    assert runner.invoke(memory_app, ["delete", "-n", "docs", "--yes"]).exit_code == 0
    assert json.loads(runner.invoke(memory_app, ["stats", "--json"]).stdout)["points"] == 0


def test_bad_lines_exit_1_naming_file_line_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_STATE_DIR", str(tmp_path / "state"))
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "Good line about glaciers."}\n{"txt": "typo"}\n')
    result = runner.invoke(memory_app, ["ingest", str(data)])
    assert result.exit_code == 1
    assert f"{data}:2" in result.output and "'text' is missing" in result.output and "--text-field" in result.output
    assert "1 new" in result.output


def test_unknown_mode_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_STATE_DIR", str(tmp_path / "state"))
    result = runner.invoke(memory_app, ["search", "x", "--mode", "fuzzy"])
    assert result.exit_code == 1 and "Unknown search mode 'fuzzy'" in result.output and "Fix:" in result.output
