"""The backend contract: every test runs against the embedded engine and against qdrant-client."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strop.memory.backends import Query
from strop.memory.schema import Match, Point, Range, SearchFilter, Sparse, Where

QUESTIONS = {
    "What is the capital of France?": "paris",
    "Which river flows into the Mediterranean?": "nile",
    "language focused on memory safety": "rust",
    "How do plants turn light into glucose?": "photo",
}


def ingest(memory, corpus_file, namespace="docs"):
    return memory.ingest([corpus_file], namespace=namespace, id_field="doc_id")


def test_ingest_stores_every_document_with_its_payload(memory, corpus_file):
    report = ingest(memory, corpus_file)
    assert (report.documents, report.added, report.problems) == (6, 6, [])
    rows = {row["doc_id"]: row for row in memory.export(SearchFilter("docs"))}
    assert set(rows) == {"paris", "nile", "python", "rust", "photo", "mito"}
    row = rows["paris"]
    assert row["namespace"] == "docs" and row["title"] == "Geography" and row["chunk"] == 0
    assert row["source"] == str(corpus_file) and row["tags"] == ["geography"]
    assert abs(row["created_at"] - time.time()) < 120


def test_reingesting_the_same_data_adds_nothing(memory, corpus_file):
    ingest(memory, corpus_file)
    again = ingest(memory, corpus_file)
    assert (again.added, again.skipped) == (0, 6)
    assert memory.backend.count() == 6


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_each_mode_ranks_the_answering_passage_first(memory, corpus_file, mode):
    ingest(memory, corpus_file)
    for question, doc_id in QUESTIONS.items():
        hits = memory.search(question, k=3, mode=mode, where=SearchFilter("docs"))
        assert hits[0].payload["doc_id"] == doc_id, (mode, question, [h.payload["doc_id"] for h in hits])
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_namespaces_never_leak(memory, corpus_file):
    ingest(memory, corpus_file, "alice")
    memory.ingest([corpus_file.parent / "nothing.txt"], namespace="bob")
    assert memory.search("capital of France", mode="hybrid", where=SearchFilter("bob")) == []
    assert {h.payload["namespace"] for h in memory.search("France", k=10, where=SearchFilter("alice"))} == {"alice"}


def test_filters_by_source_tags_and_time(memory, corpus_file, tmp_path):
    ingest(memory, corpus_file)
    note = tmp_path / "note.md"
    note.write_text("# Rivers\n\nThe Danube flows through ten countries into the Black Sea.\n")
    memory.ingest([note], namespace="docs", tags=("later",))
    in_note = memory.search("river", k=10, where=SearchFilter("docs", source=str(note)))
    assert [h.payload["title"] for h in in_note] == ["Rivers"]
    tagged = memory.search("river", k=10, where=SearchFilter("docs", tags=("geography",)))
    assert {h.payload["doc_id"] for h in tagged} == {"paris", "nile"}
    cut = max(r["created_at"] for r in memory.export(SearchFilter("docs", source=str(corpus_file))))
    recent = memory.search("river", k=10, mode="dense", where=SearchFilter("docs", after=cut + 1e-6))
    assert [h.payload["title"] for h in recent] == ["Rivers"]
    # a bound exactly at a stored time is compared at the index's float precision: a microsecond past it
    older = memory.search("river", k=10, mode="dense", where=SearchFilter("docs", before=cut + 1e-6))
    assert "Rivers" not in {h.payload["title"] for h in older} and len(older) == 6


def test_delete_by_source_and_namespace(memory, corpus_file):
    ingest(memory, corpus_file, "a")
    ingest(memory, corpus_file, "b")
    assert memory.delete(SearchFilter("a", source=str(corpus_file))) == 6
    assert memory.backend.count() == 6
    assert memory.stats()["namespaces"] == {"b": 6}


def test_bad_files_and_lines_are_reported_and_the_rest_ingests(memory, corpus_file, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "Valid line about volcanoes erupting lava."}\nnot json\n{"body": "x"}\n[1, 2]\n')
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01PNG")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    report = memory.ingest([corpus_file, bad, tmp_path / "empty.txt", tmp_path / "binary.txt",
                            tmp_path / "latin.txt", tmp_path / "missing.md"], namespace="docs")
    problems = [str(p) for p in report.problems]
    assert report.added == 7
    expected = [f"{bad}:2: Not valid JSON", f"{bad}:3: Field 'text' is missing (fields: body)",
                f"{bad}:4: The line is a JSON list", "empty.txt: The file is empty", "binary.txt: The file is binary",
                "latin.txt: The file is not UTF-8", "missing.md: No such file"]
    for text in expected:
        assert any(text in p for p in problems), (text, problems)
    assert all("Fix:" in p for p in problems)


def test_backend_query_respects_offset_and_must_not(memory):
    """The raw backend API: paging and exclusion behave alike on both engines."""
    points = [Point(f"00000000-0000-0000-0000-{i:012d}", {"namespace": "n", "i": i, "created_at": float(i)},
                    dense=[1.0, i / 10, 0.0] + [0.0] * 381, sparse=Sparse([i + 1], [1.0])) for i in range(6)]
    memory.backend.upsert(points)
    query = [1.0, 0.0, 0.0] + [0.0] * 381
    where = Where((Match("namespace", "n"),))
    ranked = [h.payload["i"] for h in memory.backend.query(Query("dense", where, limit=6, dense=query))]
    assert ranked == [0, 1, 2, 3, 4, 5]
    paged = memory.backend.query(Query("dense", where, limit=2, offset=2, dense=query))
    assert [h.payload["i"] for h in paged] == [2, 3]
    fewer = Where((Match("namespace", "n"),), must_not=(Range("created_at", lt=3),))
    assert [h.payload["i"] for h in memory.backend.query(Query("dense", fewer, limit=6, dense=query))] == [3, 4, 5]
    assert memory.backend.count(fewer) == 3


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 50)), min_size=1, max_size=25))
def test_search_in_a_namespace_returns_only_its_points(memory, placed):
    """Random points in random namespaces: every mode returns exactly the namespace's own points."""
    memory.backend.delete(Where())
    points = {}
    for n, (ns, seed) in enumerate(placed):
        pid = f"00000000-0000-0000-0000-{n:012d}"
        points[pid] = ns
        memory.backend.upsert([Point(pid, {"namespace": ns}, dense=[1.0, seed / 50] + [0.0] * 382,
                                     sparse=Sparse([seed, 99], [1.0, 1.0]))])
    for ns in ("a", "b", "c"):
        own = {pid for pid, owner in points.items() if owner == ns}
        for mode in ("dense", "sparse", "hybrid"):
            hits = memory.backend.query(Query(mode, SearchFilter(ns).where(), limit=50,
                                              dense=[1.0] + [0.0] * 383, sparse=Sparse([99], [1.0])))
            assert {h.id for h in hits} == own
