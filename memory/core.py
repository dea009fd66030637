"""The memory: embed, store and search chunks in one Qdrant collection, isolated by namespace."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from strop.config import Settings, load_settings
from strop.errors import StropError
from strop.memory.backends import Backend, Fusion, Layout, Query, open_backend
from strop.memory.chunking import chunk_text
from strop.memory.embed import Embedder, SparseEncoder
from strop.memory.ingest import Chunk, Problem, chunk_document, read_documents
from strop.memory.schema import MODES, Hit, Mode, Point, SearchFilter

KEYWORDS = ("namespace", "source", "doc_id", "tags")
BATCH = 512  # chunks embedded and written together: large enough for throughput, small enough to lose little


@dataclass
class IngestReport:
    """What an ingest did."""

    files: set[str] = field(default_factory=set)
    documents: int = 0
    chunks: int = 0
    added: int = 0
    skipped: int = 0
    problems: list[Problem] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts and problems as plain data."""
        return {"files": len(self.files), "documents": self.documents, "chunks": self.chunks, "added": self.added,
                "already_stored": self.skipped, "problems": [str(p) for p in self.problems]}


class Memory:
    """Chunks with dense and sparse vectors in a Qdrant collection (embedded engine or server)."""

    def __init__(self, settings: Settings | None = None, embedder: Embedder | None = None,
                 backend: Backend | None = None):
        self.settings = settings or load_settings()
        mem = self.settings.memory
        self.embedder = embedder or Embedder(mem.embedding_model, mem.embed_batch_size, mem.embed_threads)
        self.sparse = SparseEncoder(mem.bm25_k, mem.bm25_b, mem.bm25_avg_len)
        self.fusion = Fusion(k=mem.rrf_k, dense_weight=mem.dense_weight, sparse_weight=mem.sparse_weight)
        self._backend = backend

    @cached_property
    def backend(self) -> Backend:
        """The collection, opened (or created) on first use."""
        if self._backend is None:
            layout = Layout(dim=self.embedder.dim, model=self.embedder.name, keywords=KEYWORDS, tenant="namespace",
                            floats=("created_at",))
            self._backend = open_backend(self.settings, self.settings.memory.collection, layout)
        return self._backend

    def close(self) -> None:
        """Flush and release the collection."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None
            self.__dict__.pop("backend", None)

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ ingest

    def chunker(self) -> Callable[[str], list[str]]:
        """Sentence-respecting chunking with the configured size and overlap."""
        mem = self.settings.memory
        return partial(chunk_text, max_chars=mem.chunk_chars, overlap=mem.chunk_overlap)

    def ingest(self, paths: Iterable[str | Path], namespace: str = "default", text_field: str = "text",
               id_field: str | None = None, tags: tuple[str, ...] = (),
               progress: Callable[[int, int], None] | None = None) -> IngestReport:
        """Ingest files and folders; bad files and lines become ``report.problems``, the rest is stored.

        ``progress(done, total)`` is called as chunks are stored.
        """
        report = IngestReport()
        chunks: list[Chunk] = []
        chunker = self.chunker()
        for doc in read_documents(paths, report.problems, text_field, id_field):
            report.files.add(doc.source)
            report.documents += 1
            chunks += chunk_document(doc, namespace, chunker, tags)
        self.store_chunks(chunks, report, progress)
        return report

    def store_chunks(self, chunks: list[Chunk], report: IngestReport,
                     progress: Callable[[int, int], None] | None = None) -> None:
        """Embed and write the chunks not stored yet, in batches (each batch is durable once written)."""
        unique = list({c.id: c for c in chunks}.values())
        report.chunks += len(unique)
        backend = self.backend
        for start in range(0, len(unique), BATCH):
            batch = unique[start:start + BATCH]
            stored = backend.existing([c.id for c in batch])
            new = [c for c in batch if c.id not in stored]
            report.skipped += len(batch) - len(new)
            if new:
                texts = [c.embed_text for c in new]
                dense = self.embedder.encode(texts)
                backend.upsert([Point(c.id, c.payload, dense=vec.tolist(), sparse=self.sparse.document(text))
                                for c, vec, text in zip(new, dense, texts, strict=True)])
                report.added += len(new)
            if progress:
                progress(min(start + BATCH, len(unique)), len(unique))
        if report.added:
            backend.optimize()

    # ------------------------------------------------------------------ search

    def search(self, query: str, k: int = 5, mode: Mode = "hybrid", where: SearchFilter | None = None,
               exact: bool = False) -> list[Hit]:
        """The ``k`` best chunks for ``query`` inside one namespace (and the other filters given)."""
        if mode not in MODES:
            raise StropError(f"Unknown search mode {mode!r}.", fix=f"Use one of: {', '.join(MODES)}.")
        if not query.strip():
            raise StropError("The search query is empty.", fix="Pass some words to search for.")
        where = where or SearchFilter()
        dense = self.embedder.encode([query])[0].tolist() if mode != "sparse" else None
        sparse = self.sparse.query(query) if mode != "dense" else None
        if mode != "dense" and not sparse.indices:
            if mode == "sparse":
                return []  # only stop words: nothing for BM25 to match
            mode = "dense"
        return self.backend.query(Query(mode=mode, where=where.where(), limit=k, dense=dense, sparse=sparse,
                                        fusion=self.fusion, hnsw_ef=self.settings.memory.hnsw_ef, exact=exact))

    # ------------------------------------------------------------------ housekeeping

    def stats(self) -> dict[str, Any]:
        """Points per namespace and per source, and the collection's model and dimension."""
        namespaces: Counter[str] = Counter()
        sources: Counter[tuple[str, str]] = Counter()
        for hit in self.backend.scroll_all():
            namespaces[hit.payload.get("namespace", "?")] += 1
            sources[(hit.payload.get("namespace", "?"), hit.payload.get("source", "?"))] += 1
        layout = self.backend.layout
        return {"backend": self.settings.memory.backend, "collection": self.settings.memory.collection,
                "model": layout.model, "dim": layout.dim, "points": sum(namespaces.values()),
                "namespaces": dict(sorted(namespaces.items())),
                "sources": [{"namespace": ns, "source": src, "points": n} for (ns, src), n in sorted(sources.items())]}

    def delete(self, where: SearchFilter) -> int:
        """Delete the chunks matching ``where``; returns how many there were."""
        condition = where.where()
        count = self.backend.count(condition)
        if count:
            self.backend.delete(condition)
        return count

    def export(self, where: SearchFilter | None = None) -> Iterator[dict[str, Any]]:
        """Every stored chunk (id and payload) matching ``where``, or all of them."""
        for hit in self.backend.scroll_all(where.where() if where else None):
            yield {"id": hit.id, **hit.payload}
