"""Appends after a kill: a torn last line must not swallow the record written after it."""

from __future__ import annotations

import json

from strop.files import BadLine, append_line, json_lines, read_lines


def test_an_append_after_a_torn_last_line_keeps_the_old_records_and_the_new_one(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    append_line(path, {"k": 0})
    append_line(path, {"k": 1})
    with path.open("ab") as fh:  # a kill in the middle of the third append
        fh.write(json.dumps({"k": 2, "answer": "cut short"}).encode()[:12])

    append_line(path, {"k": 3})

    assert read_lines(path) == [{"k": 0}, {"k": 1}, {"k": 3}]
    bad = [record for _, record in json_lines(path) if isinstance(record, BadLine)]
    assert [b.line for b in bad] == [3], "the torn line stays one bad line of its own"


def test_appends_to_a_clean_file_add_no_blank_lines(tmp_path):
    path = tmp_path / "scores.jsonl"
    for k in range(3):
        append_line(path, {"k": k})
    assert path.read_text().splitlines() == ['{"k": 0}', '{"k": 1}', '{"k": 2}']


def test_an_append_to_an_empty_file_starts_at_its_first_line(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    append_line(path, {"k": 0})
    assert path.read_text() == '{"k": 0}\n'
