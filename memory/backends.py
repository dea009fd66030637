"""Two Qdrant backends behind one interface.

- ``EdgeBackend``: Qdrant's engine in-process (``qdrant-edge-py``), persistent in a folder. The default.
- ``ClientBackend``: ``qdrant-client`` against a Qdrant server or cluster by URL (or ``":memory:"``).

Both store a named dense vector ``dense`` (cosine) and a named sparse vector ``sparse`` (IDF applied
by Qdrant, so the stored term weights plus IDF score as BM25), and both filter with ``schema.Where``.
"""

from __future__ import annotations

import json
import uuid
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strop.errors import StropError
from strop.files import write_atomic
from strop.memory.schema import Hit, Match, MatchAny, Mode, Point, Range, Sparse, Where

DENSE, SPARSE = "dense", "sparse"
META_FILE = "strop-memory.json"


@dataclass(frozen=True)
class Layout:
    """What a collection holds: the dense size (None: sparse only), the model, and indexed payload fields."""

    dim: int | None
    model: str
    keywords: tuple[str, ...] = ()
    tenant: str | None = None
    floats: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fusion:
    """Hybrid search: weighted reciprocal rank fusion of the dense and sparse rankings."""

    k: int = 60
    dense_weight: float = 1.0
    sparse_weight: float = 1.0
    prefetch: int = 50


@dataclass
class Query:
    """One search: the vectors for the mode, the filter, and paging."""

    mode: Mode
    where: Where
    limit: int
    dense: list[float] | None = None
    sparse: Sparse | None = None
    offset: int = 0
    fusion: Fusion = field(default_factory=Fusion)
    hnsw_ef: int | None = None
    exact: bool = False


def check_layout(found: Layout, wanted: Layout, where: str) -> None:
    """Refuse to mix vectors from models of different dimensions in one collection."""
    if wanted.dim is not None and found.dim != wanted.dim:
        raise StropError(
            f"The memory at {where} holds {found.dim}-dimensional vectors from model {found.model!r}, "
            f"but the embedding model {wanted.model!r} makes {wanted.dim}-dimensional ones.",
            fix="Use the model the memory was built with (memory.embedding_model), or another "
                "memory.collection / state_dir for the new model.")


class Backend(ABC):
    """A Qdrant collection: create-or-open, upsert, query, scroll, count, delete."""

    layout: Layout

    @abstractmethod
    def upsert(self, points: list[Point]) -> None:
        """Insert or replace points by id."""

    @abstractmethod
    def retrieve(self, ids: list[str]) -> list[Hit]:
        """The points with these ids that exist (score 0)."""

    @abstractmethod
    def query(self, query: Query) -> list[Hit]:
        """Dense, sparse or hybrid search inside ``query.where``."""

    @abstractmethod
    def scroll(self, where: Where | None, limit: int, after: str | None = None) -> tuple[list[Hit], str | None]:
        """A page of points in id order, and the id to continue from (None at the end)."""

    @abstractmethod
    def count(self, where: Where | None = None) -> int:
        """How many points match."""

    @abstractmethod
    def delete(self, where: Where | None = None, ids: list[str] | None = None) -> None:
        """Delete the points matching ``where`` or with these ``ids``."""

    def optimize(self) -> None:
        """Build indexes now (HNSW, payload); a no-op where the server does it itself."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Release the collection (and the folder lock for the embedded engine)."""

    def existing(self, ids: list[str]) -> set[str]:
        """The subset of ``ids`` already stored."""
        return {hit.id for hit in self.retrieve(ids)}

    def scroll_all(self, where: Where | None = None, page: int = 1000):
        """Every point matching ``where``, page by page."""
        after = None
        while True:
            hits, after = self.scroll(where, page, after)
            yield from hits
            if after is None:
                return


# --------------------------------------------------------------------------- embedded engine


class EdgeBackend(Backend):
    """Qdrant's engine in this process, persisted (with a write-ahead log) in ``folder``."""

    def __init__(self, folder: Path, layout: Layout):
        import qdrant_edge as qe

        self.qe = qe
        self.folder = Path(folder)
        self.layout = layout
        meta = self.folder / META_FILE
        if meta.exists():
            stored = json.loads(meta.read_text())
            found = Layout(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})
            check_layout(found, layout, str(self.folder))
            self.layout = found
        if (self.folder / "edge_config.json").exists():
            self.shard = self._open(lambda: qe.EdgeShard.load(str(self.folder)))
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.shard = self._open(lambda: qe.EdgeShard.create(str(self.folder), self._config(self.layout)))
        if not meta.exists():  # new, or a crash came between creating the shard and recording its layout
            self._create_indexes(self.layout)
            write_atomic(meta, json.dumps(self.layout.__dict__))

    def _open(self, make):
        try:
            return make()
        except Exception as exc:
            text = str(exc)
            if "WouldBlock" in text or "lock" in text.lower():
                raise StropError(f"The memory folder {self.folder} is in use by another process.",
                                 fix="Wait for or stop the other strop process (e.g. a running `strop memory "
                                     "ingest`); several processes can share one memory with memory.backend = "
                                     "\"server\".") from exc
            raise StropError(f"Cannot open the memory at {self.folder}: {text}",
                             fix="Move the folder aside and ingest again, or restore it from "
                                 "`strop memory export`.") from exc

    def _config(self, layout: Layout):
        qe = self.qe
        vectors = {DENSE: qe.EdgeVectorParams(size=layout.dim, distance=qe.Distance.Cosine)} if layout.dim else {}
        return qe.EdgeConfig(vectors=vectors,
                             sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
                             hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=128, full_scan_threshold=10_000))

    def _create_indexes(self, layout: Layout) -> None:
        qe = self.qe
        # No is_tenant here: measured with qdrant-edge 0.9.0 at 100k points in two segments, a tenant index
        # cut filtered HNSW recall@10 to 0.24; a plain keyword index with ACORN search gives 1.0.
        for name in layout.keywords:
            self.shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
        for name in layout.floats:
            self.shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Float))

    def _filter(self, where: Where | None):
        if where is None or not (where.must or where.must_not):
            return None
        return self.qe.Filter(must=[self._cond(c) for c in where.must] or None,
                              must_not=[self._cond(c) for c in where.must_not] or None)

    def _cond(self, cond):
        qe = self.qe
        if isinstance(cond, Match):
            return qe.FieldCondition(cond.key, match=qe.MatchValue(cond.value))
        if isinstance(cond, MatchAny):
            return qe.FieldCondition(cond.key, match=qe.MatchAny(list(cond.values)))
        if isinstance(cond, Range):
            return qe.FieldCondition(cond.key, range=qe.RangeFloat(gte=cond.gte, gt=cond.gt, lte=cond.lte, lt=cond.lt))
        raise TypeError(f"unknown condition {cond!r}")

    def _vectors(self, point: Point) -> dict:
        vectors: dict[str, Any] = {}
        if point.dense is not None:
            vectors[DENSE] = list(point.dense)
        if point.sparse is not None and point.sparse.indices:
            vectors[SPARSE] = self.qe.SparseVector(point.sparse.indices, point.sparse.values)
        return vectors

    def upsert(self, points: list[Point]) -> None:
        if points:
            qe = self.qe
            batch = [qe.Point(p.id, self._vectors(p), p.payload) for p in points]
            self.shard.update(qe.UpdateOperation.upsert_points(batch))

    def retrieve(self, ids: list[str]) -> list[Hit]:
        if not ids:
            return []
        return [_hit(r.id, 0.0, r.payload) for r in self.shard.retrieve(list(ids), True, False)]

    def _nearest(self, query: Query, mode: str):
        qe = self.qe
        if mode == "dense":
            return qe.Query.Nearest(list(query.dense), using=DENSE)
        return qe.Query.Nearest(qe.SparseVector(query.sparse.indices, query.sparse.values), using=SPARSE)

    def query(self, query: Query) -> list[Hit]:
        qe = self.qe
        # ACORN keeps HNSW recall high under filters (every memory search filters by namespace).
        params = qe.SearchParams(hnsw_ef=query.hnsw_ef, exact=query.exact, acorn=qe.AcornSearchParams(enable=True))
        flt = self._filter(query.where)
        if query.mode == "hybrid":
            depth = max(query.fusion.prefetch, query.limit + query.offset)
            request = qe.QueryRequest(
                limit=query.limit, offset=query.offset, filter=flt, with_payload=True,
                prefetches=[qe.Prefetch(limit=depth, query=self._nearest(query, m), params=params, filter=flt)
                            for m in ("dense", "sparse")],
                query=qe.Fusion.Rrf(k=query.fusion.k,
                                    weights=[query.fusion.dense_weight, query.fusion.sparse_weight]))
        else:
            request = qe.QueryRequest(limit=query.limit, offset=query.offset, filter=flt, with_payload=True,
                                      query=self._nearest(query, query.mode), params=params)
        return [_hit(p.id, p.score, p.payload) for p in self.shard.query(request)]

    def scroll(self, where, limit, after=None):
        records, nxt = self.shard.scroll(self.qe.ScrollRequest(offset=after, limit=limit, filter=self._filter(where),
                                                               with_payload=True))
        return [_hit(r.id, 0.0, r.payload) for r in records], (str(nxt) if nxt is not None else None)

    def count(self, where=None) -> int:
        return self.shard.count(self.qe.CountRequest(exact=True, filter=self._filter(where)))

    def delete(self, where=None, ids=None) -> None:
        qe = self.qe
        if ids:
            self.shard.update(qe.UpdateOperation.delete_points(list(ids)))
        if where is not None:
            self.shard.update(qe.UpdateOperation.delete_points_by_filter(self._filter(where) or qe.Filter()))

    def optimize(self) -> None:
        self.shard.optimize()

    def flush(self) -> None:
        self.shard.flush()

    def close(self) -> None:
        if self.shard is not None:
            self.shard.flush()
            self.shard.close()
            self.shard = None


# --------------------------------------------------------------------------- server / cluster


class ClientBackend(Backend):
    """A collection on a Qdrant server or cluster through ``qdrant-client`` (``":memory:"`` runs it in-process)."""

    def __init__(self, location: str, collection: str, layout: Layout, api_key: str | None = None,
                 client=None):
        from qdrant_client import QdrantClient, models

        self.m = models
        self.collection = collection
        self.location = location
        try:
            self.client = client or QdrantClient(location=location, api_key=api_key)
            exists = self.client.collection_exists(collection)
        except Exception as exc:
            raise StropError(f"Cannot reach the Qdrant server at {location}: {exc}",
                             fix="Check memory.url and memory.api_key (STROP_MEMORY__URL, STROP_MEMORY__API_KEY), "
                                 "or use memory.backend = \"embedded\".") from exc
        self.layout = layout
        if self.client.__class__.__name__ == "QdrantClient" and location == ":memory:":
            # In-process mode warns that payload indexes and search params do nothing there; that is expected.
            warnings.filterwarnings("ignore", message=".*(Payload indexes|Local mode).*", category=UserWarning)
        if exists:
            info = self.client.get_collection(collection)
            vectors = info.config.params.vectors or {}
            dim = vectors[DENSE].size if isinstance(vectors, dict) and DENSE in vectors else None
            meta = info.config.metadata or {}
            found = Layout(dim=dim, model=str(meta.get("model", "unknown")), keywords=layout.keywords,
                           tenant=layout.tenant, floats=layout.floats)
            check_layout(found, layout, f"{location} collection {collection!r}")
            self.layout = found
        else:
            self._create(layout)

    def _create(self, layout: Layout) -> None:
        m = self.m
        vectors = {DENSE: m.VectorParams(size=layout.dim, distance=m.Distance.COSINE)} if layout.dim else {}
        self.client.create_collection(
            self.collection, vectors_config=vectors,
            sparse_vectors_config={SPARSE: m.SparseVectorParams(modifier=m.Modifier.IDF)},
            hnsw_config=m.HnswConfigDiff(m=16, ef_construct=128), metadata={"model": layout.model})
        for name in layout.keywords:
            schema = (m.KeywordIndexParams(type=m.KeywordIndexType.KEYWORD, is_tenant=True)
                      if name == layout.tenant else m.PayloadSchemaType.KEYWORD)
            self.client.create_payload_index(self.collection, name, schema)
        for name in layout.floats:
            self.client.create_payload_index(self.collection, name, m.PayloadSchemaType.FLOAT)

    def _filter(self, where: Where | None):
        if where is None or not (where.must or where.must_not):
            return None
        return self.m.Filter(must=[self._cond(c) for c in where.must] or None,
                             must_not=[self._cond(c) for c in where.must_not] or None)

    def _cond(self, cond):
        m = self.m
        if isinstance(cond, Match):
            return m.FieldCondition(key=cond.key, match=m.MatchValue(value=cond.value))
        if isinstance(cond, MatchAny):
            return m.FieldCondition(key=cond.key, match=m.MatchAny(any=list(cond.values)))
        if isinstance(cond, Range):
            return m.FieldCondition(key=cond.key, range=m.Range(gte=cond.gte, gt=cond.gt, lte=cond.lte, lt=cond.lt))
        raise TypeError(f"unknown condition {cond!r}")

    def _vectors(self, point: Point) -> dict:
        vectors: dict[str, Any] = {}
        if point.dense is not None:
            vectors[DENSE] = list(point.dense)
        if point.sparse is not None and point.sparse.indices:
            vectors[SPARSE] = self.m.SparseVector(indices=point.sparse.indices, values=point.sparse.values)
        return vectors

    def upsert(self, points: list[Point]) -> None:
        if points:
            batch = [self.m.PointStruct(id=p.id, vector=self._vectors(p), payload=p.payload) for p in points]
            self.client.upsert(self.collection, batch, wait=True)

    def retrieve(self, ids: list[str]) -> list[Hit]:
        if not ids:
            return []
        return [_hit(r.id, 0.0, r.payload) for r in self.client.retrieve(self.collection, list(ids), with_payload=True)]

    def _nearest(self, query: Query, mode: str):
        if mode == "dense":
            return list(query.dense)
        return self.m.SparseVector(indices=query.sparse.indices, values=query.sparse.values)

    def query(self, query: Query) -> list[Hit]:
        m = self.m
        params = m.SearchParams(hnsw_ef=query.hnsw_ef, exact=query.exact, acorn=m.AcornSearchParams(enable=True))
        flt = self._filter(query.where)
        if query.mode == "hybrid":
            depth = max(query.fusion.prefetch, query.limit + query.offset)
            response = self.client.query_points(
                self.collection, limit=query.limit, offset=query.offset, query_filter=flt, with_payload=True,
                prefetch=[m.Prefetch(query=self._nearest(query, mode), using=mode, limit=depth, params=params,
                                     filter=flt) for mode in ("dense", "sparse")],
                query=m.RrfQuery(rrf=m.Rrf(k=query.fusion.k,
                                           weights=[query.fusion.dense_weight, query.fusion.sparse_weight])))
        else:
            response = self.client.query_points(
                self.collection, query=self._nearest(query, query.mode), using=query.mode, limit=query.limit,
                offset=query.offset, query_filter=flt, with_payload=True, search_params=params)
        return [_hit(p.id, p.score, p.payload) for p in response.points]

    def scroll(self, where, limit, after=None):
        records, nxt = self.client.scroll(self.collection, scroll_filter=self._filter(where), limit=limit,
                                          offset=after, with_payload=True)
        return [_hit(r.id, 0.0, r.payload) for r in records], (str(nxt) if nxt is not None else None)

    def count(self, where=None) -> int:
        return self.client.count(self.collection, count_filter=self._filter(where), exact=True).count

    def delete(self, where=None, ids=None) -> None:
        m = self.m
        if ids:
            self.client.delete(self.collection, points_selector=m.PointIdsList(points=list(ids)), wait=True)
        if where is not None:
            flt = self._filter(where) or m.Filter()
            self.client.delete(self.collection, points_selector=m.FilterSelector(filter=flt), wait=True)

    def close(self) -> None:
        self.client.close()


def _hit(point_id: Any, score: float, payload: dict | None) -> Hit:
    return Hit(id=str(point_id) if isinstance(point_id, uuid.UUID | str) else str(uuid.UUID(int=point_id)),
               score=float(score), payload=dict(payload or {}))


def open_backend(settings, collection: str, layout: Layout) -> Backend:
    """The backend the settings choose: the embedded engine under ``memory_dir`` or a server by URL."""
    mem = settings.memory
    if mem.backend == "server":
        if not mem.url:
            raise StropError("memory.backend is \"server\" but memory.url is not set.",
                             fix="Set STROP_MEMORY__URL=http://host:6333 (and STROP_MEMORY__API_KEY if needed).")
        key = mem.api_key.get_secret_value() if mem.api_key else None
        return ClientBackend(mem.url, collection, layout, api_key=key)
    return EdgeBackend(settings.memory_dir / collection, layout)
