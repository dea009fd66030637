"""A LangGraph ``BaseStore`` over the Qdrant memory, so LangGraph agents keep their long-term memory in it.

Layout in the collection:

- one *item* point per (namespace, key), no vector: the value, timestamps, the namespace and all of
  its prefixes (for prefix search), and an insertion sequence number (the order of unranked results);
- one *vector* point per embedded text of an item (``index`` config ``fields``), pointing at its item.

Search by query ranks an item by its best-scoring text (max pooling), as ``InMemoryStore`` does.
Value filters follow LangGraph's semantics exactly (``$eq $ne $gt $gte $lt $lte``, nested dicts) and
are applied to the candidates of the namespace prefix.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)
from langgraph.store.base.embed import ensure_embeddings, get_text_at_path, tokenize_path

from strop.memory.backends import Backend, Layout, Query, open_backend
from strop.memory.schema import Match, MatchAny, Point, Where

SEP = "."
_ID_SPACE = uuid.UUID("0d4f6a8e-3b9c-4c51-8a2e-7f1d2c3b4a59")
ITEM, VECTOR = Match("kind", "item"), Match("kind", "vector")


def encode_namespace(namespace: tuple[str, ...]) -> str:
    """One string per namespace, never the same for two namespaces.

    Labels that ``BaseStore.put`` accepts (not empty, no period) are joined with periods, as stored so far;
    such a join never starts with a period and has no NUL. Any other namespace (``batch`` and reads do not
    check labels: ``("a.b",)`` would join like ``("a", "b")``) is a period followed by its labels as a JSON
    list, which has no raw NUL either, so the item id's ``namespace NUL key`` stays unambiguous too.
    """
    if all(label and SEP not in label and "\x00" not in label for label in namespace):
        return SEP.join(namespace)
    return SEP + json.dumps(list(namespace))


def _item_id(namespace: tuple[str, ...], key: str) -> str:
    return str(uuid.uuid5(_ID_SPACE, f"{encode_namespace(namespace)}\x00{key}"))


def _prefix_where(prefix: tuple[str, ...]) -> Where:
    return Where((Match("ns_prefixes", encode_namespace(prefix)),)) if prefix else Where()


def matches(value: Any, condition: Any) -> bool:
    """LangGraph's filter semantics: operators, nested dicts, exact list equality, plain equality."""
    if isinstance(condition, dict):
        if any(k.startswith("$") for k in condition):
            return all(_operator(value, op, operand) for op, operand in condition.items())
        return isinstance(value, dict) and all(matches(value.get(k), v) for k, v in condition.items())
    if isinstance(condition, list | tuple):
        return (isinstance(value, list | tuple) and len(value) == len(condition)
                and all(matches(v, c) for v, c in zip(value, condition, strict=True)))
    return value == condition


def _operator(value: Any, op: str, operand: Any) -> bool:
    compare = {"$eq": lambda: value == operand, "$ne": lambda: value != operand,
               "$gt": lambda: float(value) > float(operand), "$gte": lambda: float(value) >= float(operand),
               "$lt": lambda: float(value) < float(operand), "$lte": lambda: float(value) <= float(operand)}
    if op not in compare:
        raise ValueError(f"Unsupported operator: {op}")
    return compare[op]()


class QdrantStore(BaseStore):
    """LangGraph store persisted in Qdrant (embedded engine or server), with optional semantic search.

    ``index`` is LangGraph's ``IndexConfig``: ``dims``, ``embed`` (an ``Embeddings``, a function or a
    ``"provider:model"`` string; default: the memory's sentence-transformers model) and ``fields``.
    """

    def __init__(self, backend: Backend, *, index: IndexConfig | None = None):
        self.backend = backend
        self.index_config = dict(index) if index else None
        self.embeddings = None
        if self.index_config:
            embed = self.index_config.get("embed")
            if embed is None:
                from strop.memory.embed import Embedder

                embed = Embedder().embed_documents
            self.embeddings = ensure_embeddings(embed)
            self.fields = [(p, tokenize_path(p) if p != "$" else p) for p in self.index_config.get("fields") or ["$"]]

    @classmethod
    def open(cls, settings=None, *, index: IndexConfig | None = None) -> QdrantStore:
        """The store of the configured memory (collection ``<collection>-store``)."""
        from strop.config import load_settings

        settings = settings or load_settings()
        layout = Layout(dim=index["dims"] if index else None, model="langgraph-store",
                        keywords=("kind", "ns_prefixes", "item"))
        return cls(open_backend(settings, f"{settings.memory.collection}-store", layout), index=index)

    def close(self) -> None:
        """Release the collection."""
        self.backend.close()

    # ------------------------------------------------------------------ BaseStore

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Reads see the store as it was before the batch; the last put per (namespace, key) wins."""
        ops = list(ops)
        results: list[Result] = []
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for op in ops:
            if isinstance(op, GetOp):
                results.append(self._get(op))
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            elif isinstance(op, PutOp):
                puts[(op.namespace, op.key)] = op
                results.append(None)
            else:
                raise ValueError(f"Unknown operation type: {type(op)}")
        self._apply_puts(list(puts.values()))
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """``batch`` in a worker thread."""
        return await asyncio.get_running_loop().run_in_executor(None, self.batch, list(ops))

    # ------------------------------------------------------------------ reads

    @staticmethod
    def _item(payload: dict[str, Any], score: float | None = None, scored: bool = False) -> Item:
        fields = dict(value=payload["value"], key=payload["key"], namespace=tuple(payload["namespace"]),
                      created_at=datetime.fromisoformat(payload["created_at"]),
                      updated_at=datetime.fromisoformat(payload["updated_at"]))
        return SearchItem(**fields, score=score) if scored else Item(**fields)

    def _get(self, op: GetOp) -> Item | None:
        found = self.backend.retrieve([_item_id(op.namespace, op.key)])
        return self._item(found[0].payload) if found else None

    def _candidates(self, op: SearchOp) -> list[dict[str, Any]]:
        """Items under the prefix that pass the filter, in insertion order."""
        items = [h.payload for h in self.backend.scroll_all(Where((ITEM,)) & _prefix_where(op.namespace_prefix))]
        if op.filter:
            items = [p for p in items if all(matches(p["value"].get(k), v) for k, v in op.filter.items())]
        return sorted(items, key=lambda p: p["seq"])

    def _search(self, op: SearchOp) -> list[SearchItem]:
        candidates = self._candidates(op)
        if not candidates:
            return []
        if not (op.query and self.embeddings):
            return [self._item(p, scored=True) for p in candidates[op.offset:op.offset + op.limit]]
        ranked = self._rank(op, {_item_id(tuple(p["namespace"]), p["key"]): p for p in candidates})
        kept = [(score, payload) for score, payload in ranked[op.offset:op.offset + op.limit]]
        if len(kept) < op.limit:
            # Like InMemoryStore: fill up with the items that have no embedded text, unscored.
            embedded = {_item_id(tuple(p["namespace"]), p["key"]) for _, p in ranked}
            scoreless = [p for p in candidates if _item_id(tuple(p["namespace"]), p["key"]) not in embedded]
            kept += [(None, p) for p in scoreless[:op.limit - len(kept)]]
        return [self._item(p, score, scored=True) for score, p in kept]

    def _rank(self, op: SearchOp, candidates: dict[str, dict[str, Any]]) -> list[tuple[float, dict[str, Any]]]:
        """Every candidate with an embedded text, best text first (max pooling over an item's texts)."""
        vector = self.embeddings.embed_query(op.query)
        where = Where((VECTOR, MatchAny("item", tuple(candidates))))
        total = self.backend.count(where)
        hits = self.backend.query(Query("dense", where, limit=max(total, 1), dense=list(vector), exact=True))
        best: dict[str, float] = {}
        for hit in hits:
            best.setdefault(hit.payload["item"], hit.score)
        return [(score, candidates[item]) for item, score in best.items()]

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        namespaces = {tuple(h.payload["namespace"]) for h in self.backend.scroll_all(Where((ITEM,)))}
        for condition in op.match_conditions or ():
            namespaces = {ns for ns in namespaces if _namespace_matches(condition, ns)}
        if op.max_depth is not None:
            namespaces = {ns[:op.max_depth] for ns in namespaces}
        return sorted(namespaces)[op.offset:op.offset + op.limit]

    # ------------------------------------------------------------------ writes

    def _apply_puts(self, puts: list[PutOp]) -> None:
        if not puts:
            return
        ids = [_item_id(op.namespace, op.key) for op in puts]
        existing = {h.id: h.payload for h in self.backend.retrieve(ids)}
        gone = [item_id for item_id, op in zip(ids, puts, strict=True) if op.value is None and item_id in existing]
        if gone:
            # As in LangGraph's stores, a put replaces the vectors of the paths it embeds and keeps the
            # others (``index=False`` keeps them all); only a delete drops an item's vectors.
            self.backend.delete(where=Where((VECTOR, MatchAny("item", tuple(gone)))), ids=gone)
        now = datetime.now(UTC).isoformat()
        seq = time.time_ns()
        points, texts = [], []
        for n, (item_id, op) in enumerate(zip(ids, puts, strict=True)):
            if op.value is None:
                continue
            ns = op.namespace
            old = existing.get(item_id)
            payload = {"kind": "item", "namespace": list(ns), "key": op.key, "value": dict(op.value),
                       "ns_prefixes": [encode_namespace(ns[:i]) for i in range(1, len(ns) + 1)],
                       "created_at": now, "updated_at": now, "seq": old["seq"] if old else seq + n}
            points.append(Point(item_id, payload))
            texts += [(item_id, path, text, payload) for path, text in self._texts(op)]
        if texts:
            vectors = self.embeddings.embed_documents([t[2] for t in texts])
            points += [Point(str(uuid.uuid5(_ID_SPACE, f"{item_id}\x00{path}")),
                             {"kind": "vector", "item": item_id, "path": path,
                              "ns_prefixes": payload["ns_prefixes"]}, dense=list(vector))
                       for (item_id, path, _, payload), vector in zip(texts, vectors, strict=True)]
        self.backend.upsert(points)

    def _texts(self, op: PutOp) -> list[tuple[str, str]]:
        """(path, text) pairs to embed for a put, following ``index`` (False: none, None: the config's fields)."""
        if not self.embeddings or op.index is False:
            return []
        paths = self.fields if op.index is None else [(p, tokenize_path(p)) for p in op.index]
        pairs = []
        for path, tokens in paths:
            found = get_text_at_path(op.value, tokens)
            pairs += [(f"{path}.{i}", text) for i, text in enumerate(found)] if len(found) > 1 else \
                [(path, text) for text in found]
        return pairs


def _namespace_matches(condition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    pairs = zip(namespace, path, strict=False) if condition.match_type == "prefix" else \
        zip(reversed(namespace), reversed(path), strict=False)
    return all(p == "*" or k == p for k, p in pairs)
