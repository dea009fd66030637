"""The LangGraph store: the same random operations on InMemoryStore and on QdrantStore give the same results."""

from __future__ import annotations

import asyncio
import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.store.base import GetOp, ListNamespacesOp, MatchCondition, PutOp, SearchOp
from langgraph.store.memory import InMemoryStore

from strop.memory.backends import ClientBackend, EdgeBackend, Layout
from strop.memory.store import QdrantStore

SENTENCES = ["The cat sleeps on the sofa.", "Stock markets fell sharply today.", "A recipe for tomato soup.",
             "The team won the football final.", "Rain is expected all weekend.", "Quantum computers use qubits."]
NAMESPACES = [("users", "ann"), ("users", "bob"), ("users", "ann", "notes"), ("docs",)]
KEYS = ["k0", "k1", "k2", "k3"]


@pytest.fixture(scope="module")
def embed(embedder):
    """The real MiniLM model, cached per text so repeated values embed once."""
    cached = functools.lru_cache(maxsize=None)(lambda text: tuple(embedder.embed_query(text)))
    return lambda texts: [list(cached(t)) for t in texts]


def make_store(kind: str, tmp_path, index):
    layout = Layout(dim=384, model="all-MiniLM-L6-v2", keywords=("kind", "ns_prefixes", "item"))
    backend = EdgeBackend(tmp_path, layout) if kind == "embedded" else ClientBackend(":memory:", "store", layout)
    return QdrantStore(backend, index=index)


@st.composite
def put(draw):
    """A put (or delete). Texts name their item: InMemoryStore cannot embed one text for two items in a
    batch (it raises), and distinct texts keep scores free of ties, whose order neither store defines."""
    namespace, key = draw(st.sampled_from(NAMESPACES)), draw(st.sampled_from(KEYS))
    tag = draw(st.sampled_from(["a", "b"]))
    value = {"text": f"{draw(st.sampled_from(SENTENCES))} ({'/'.join(namespace)} {key})",
             "n": draw(st.integers(0, 5)), "tag": tag, "meta": {"lang": tag}}
    return PutOp(namespace, key, draw(st.one_of(st.none(), st.just(value), st.just(value))),
                 draw(st.sampled_from([None, None, False])))

get = st.builds(GetOp, st.sampled_from(NAMESPACES + [("nobody",)]), st.sampled_from(KEYS))
filters = st.sampled_from([None, {"tag": "a"}, {"n": {"$gte": 3}}, {"meta": {"lang": "b"}}, {"n": {"$ne": 2}}])
search = st.builds(SearchOp, st.sampled_from([(), ("users",), ("users", "ann"), ("docs",)]), filters,
                   st.sampled_from([2, 10]), st.sampled_from([0, 1]),
                   st.sampled_from([None, "pets at home", "weather forecast", "sports results"]))
listing = st.builds(ListNamespacesOp,
                    st.sampled_from([None, (MatchCondition("prefix", ("users",)),),
                                     (MatchCondition("suffix", ("notes",)),),
                                     (MatchCondition("prefix", ("*", "ann")),)]),
                    st.sampled_from([None, 1, 2]), st.sampled_from([2, 100]), st.sampled_from([0, 1]))
batches = st.lists(st.lists(st.one_of(put(), put(), get, search, listing), min_size=1, max_size=4), min_size=3,
                   max_size=12)


def normalise(result):
    """Scores and timestamps aside: namespaces, keys and values (and whether a score exists) must agree."""
    if isinstance(result, list):
        return [normalise(r) for r in result]
    if result is None or isinstance(result, tuple):
        return result
    return (result.namespace, result.key, result.value, getattr(result, "score", None) is not None)


class Reference(InMemoryStore):
    """InMemoryStore, except that it lists only namespaces that hold items: it keeps namespaces that
    were emptied or only read (by a get) in its dict and lists them too; a persisted store cannot."""

    def _handle_list_namespaces(self, op):
        for namespace in [ns for ns, items in self._data.items() if not items]:
            del self._data[namespace]
        return super()._handle_list_namespaces(op)


def compare_search(op, want: list, have: list) -> None:
    """Scored items must agree in order. Unscored ones come in insertion order, which InMemoryStore
    groups by namespace first (in the order namespaces first appeared) and QdrantStore does not: they
    must agree as a set when neither offset nor limit cut them, and in number when one did."""
    assert [w for w in want if w[3]] == [h for h in have if h[3]], op
    rest_want, rest_have = [w for w in want if not w[3]], [h for h in have if not h[3]]
    assert len(rest_want) == len(rest_have), op
    if op.offset == 0 and len(want) < op.limit:
        assert sorted(rest_want, key=repr) == sorted(rest_have, key=repr), op


@pytest.mark.parametrize("kind", ["embedded", "server"])
def test_random_operations_match_inmemorystore(kind, embed, tmp_path_factory):
    @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
    @given(batches)
    def run(ops_batches):
        index = {"dims": 384, "embed": embed, "fields": ["text"]}
        reference = Reference(index=index)
        store = make_store(kind, tmp_path_factory.mktemp("store"), index)
        try:
            for ops in ops_batches:
                expected, got = reference.batch(ops), store.batch(ops)
                for op, want, have in zip(ops, expected, got, strict=True):
                    want, have = normalise(want), normalise(have)
                    if isinstance(op, SearchOp):
                        compare_search(op, want, have)
                    else:
                        assert have == want, op
        finally:
            store.close()

    run()


def test_semantic_search_ranks_by_meaning_and_filters(embed, tmp_path):
    store = make_store("embedded", tmp_path, {"dims": 384, "embed": embed, "fields": ["text"]})
    store.put(("mem", "u1"), "a", {"text": "I adopted a kitten last week.", "kind": "pet"})
    store.put(("mem", "u1"), "b", {"text": "My favourite food is sushi.", "kind": "food"})
    store.put(("mem", "u2"), "c", {"text": "Dogs are loyal companions.", "kind": "pet"})
    hits = store.search(("mem",), query="cats and other animals", limit=3)
    assert [h.key for h in hits][:2] in (["a", "c"], ["c", "a"]) and hits[0].score > hits[2].score
    assert [h.key for h in store.search(("mem", "u1"), query="pets", filter={"kind": "pet"})] == ["a"]
    store.delete(("mem", "u1"), "a")
    assert store.get(("mem", "u1"), "a") is None
    assert store.list_namespaces(prefix=("mem",)) == [("mem", "u1"), ("mem", "u2")]
    store.close()


def test_items_persist_and_async_api_works(embed, tmp_path):
    index = {"dims": 384, "embed": embed, "fields": ["text"]}
    store = make_store("embedded", tmp_path, index)
    asyncio.run(store.aput(("a",), "k", {"text": "Persistent memories survive restarts."}))
    store.close()
    store = make_store("embedded", tmp_path, index)
    item = asyncio.run(store.aget(("a",), "k"))
    assert item.value == {"text": "Persistent memories survive restarts."}
    assert asyncio.run(store.asearch(("a",), query="restart"))[0].key == "k"
    store.close()
