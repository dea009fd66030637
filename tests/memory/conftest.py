"""Memory fixtures: one real embedding model per session, and a memory on each backend."""

from __future__ import annotations

import pytest

from strop.config import Settings
from strop.memory.backends import ClientBackend, EdgeBackend, Layout
from strop.memory.core import KEYWORDS, Memory
from strop.memory.embed import Embedder

CORPUS = [
    ("paris", "Geography", "Paris is the capital and largest city of France, on the river Seine."),
    ("nile", "Geography", "The Nile is a major river in north-eastern Africa that flows into the Mediterranean Sea."),
    ("python", "Computing", "Python is a programming language that emphasises code readability with indentation."),
    ("rust", "Computing", "Rust is a systems programming language built for memory safety without garbage collection."),
    ("photo", "Biology", "Photosynthesis converts light energy into chemical energy stored in glucose in plants."),
    ("mito", "Biology", "The mitochondrion is the organelle that produces most of the cell's supply of ATP."),
]


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real all-MiniLM-L6-v2, loaded once."""
    model = Embedder()
    model.encode(["warm up"])
    return model


def memory_layout(dim: int = 384) -> Layout:
    return Layout(dim=dim, model="all-MiniLM-L6-v2", keywords=KEYWORDS, tenant="namespace", floats=("created_at",))


@pytest.fixture(params=["embedded", "server"])
def memory(request, tmp_path, embedder):
    """A fresh memory on the embedded engine (in tmp_path) or on qdrant-client's in-process server API."""
    settings = Settings(state_dir=tmp_path / "state")
    if request.param == "embedded":
        backend = EdgeBackend(settings.memory_dir / "strop", memory_layout())
    else:
        backend = ClientBackend(":memory:", "strop", memory_layout())
    mem = Memory(settings, embedder=embedder, backend=backend)
    yield mem
    mem.close()


@pytest.fixture
def corpus_file(tmp_path):
    """A small JSONL corpus with ids, titles and tags."""
    import json

    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"doc_id": d, "title": t, "text": x, "tags": [t.lower()]}) + "\n"
                            for d, t, x in CORPUS))
    return path
