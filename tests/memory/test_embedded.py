"""Embedded-engine specifics: persistence, the folder lock, model changes and kill -9 during ingest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from strop.config import Settings
from strop.errors import StropError
from strop.memory.backends import EdgeBackend
from strop.memory.core import Memory
from strop.memory.schema import SearchFilter

from .conftest import memory_layout


def test_points_survive_closing_and_reopening(tmp_path, embedder, corpus_file):
    settings = Settings(state_dir=tmp_path)
    with Memory(settings, embedder=embedder) as mem:
        mem.ingest([corpus_file], namespace="docs", id_field="doc_id")
    with Memory(settings, embedder=embedder) as mem:
        assert mem.backend.count() == 6
        assert mem.search("capital of France", where=SearchFilter("docs"))[0].payload["doc_id"] == "paris"


def test_a_model_of_another_dimension_is_refused_and_nothing_is_lost(tmp_path, embedder, corpus_file):
    settings = Settings(state_dir=tmp_path)
    with Memory(settings, embedder=embedder) as mem:
        mem.ingest([corpus_file], namespace="docs")
    with pytest.raises(StropError) as caught:
        EdgeBackend(settings.memory_dir / "strop", memory_layout(dim=768))
    assert "384-dimensional" in caught.value.message and "768-dimensional" in caught.value.message
    assert "memory.embedding_model" in caught.value.fix
    with Memory(settings, embedder=embedder) as mem:
        assert mem.backend.count() == 6


def test_a_folder_held_by_another_process_gives_a_clear_error(tmp_path):
    folder = tmp_path / "memory" / "strop"
    EdgeBackend(folder, memory_layout()).close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from strop.memory.backends import EdgeBackend, Layout
        backend = EdgeBackend({str(folder)!r}, Layout(dim=384, model="all-MiniLM-L6-v2"))
        print("open", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StropError) as caught:
            EdgeBackend(folder, memory_layout())
        assert "in use by another process" in caught.value.message and "server" in caught.value.fix
    finally:
        holder.kill()
        holder.wait()
    EdgeBackend(folder, memory_layout()).close()  # free again once the holder is gone


def test_kill_9_during_ingest_leaves_a_memory_that_opens_and_searches(tmp_path, embedder):
    corpus = tmp_path / "big.jsonl"
    topics = ["rivers", "volcanoes", "planets", "languages", "birds", "bridges"]
    corpus.write_text("".join(json.dumps({"id": i, "text": f"Fact {i} about {topics[i % 6]}: item number {i} "
                                          f"is described here in a sentence of its own."}) + "\n"
                              for i in range(1100)))
    script = textwrap.dedent(f"""
        from strop.config import Settings
        from strop.memory.core import Memory
        memory = Memory(Settings(state_dir={str(tmp_path)!r}))
        memory.ingest([{str(corpus)!r}], namespace="big", id_field="id",
                      progress=lambda done, total: print(done, flush=True))
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    first = child.stdout.readline()
    assert first.strip().isdigit(), "the child stored no batch"
    time.sleep(0.3)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    settings = Settings(state_dir=tmp_path)
    with Memory(settings, embedder=embedder) as mem:
        stored = mem.backend.count()
        assert 512 <= stored < 1100
        assert mem.search("Fact about volcanoes", k=3, where=SearchFilter("big"))
        report = mem.ingest([corpus], namespace="big", id_field="id")
        assert report.skipped == stored and mem.backend.count() == 1100
