"""Namespace labels that contain the separator: ("a.b",) and ("a", "b") are two namespaces, and items stored
with the period-joined layout are still read."""

from __future__ import annotations

import uuid

import pytest
from langgraph.store.base import GetOp, PutOp, SearchOp

from strop.memory.backends import EdgeBackend, Layout
from strop.memory.schema import Point
from strop.memory.store import QdrantStore, encode_namespace


@pytest.fixture
def store(tmp_path):
    layout = Layout(dim=None, model="langgraph-store", keywords=("kind", "ns_prefixes", "item"))
    opened = QdrantStore(EdgeBackend(tmp_path / "store", layout))
    yield opened
    opened.close()


def keys_under(store: QdrantStore, prefix: tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    [found] = store.batch([SearchOp(prefix, limit=10)])
    return sorted((item.namespace, item.key) for item in found)


def test_a_label_with_a_period_is_its_own_namespace(store):
    # BaseStore.put refuses such labels, but batch() and every read take them as given
    store.batch([PutOp(("a.b",), "k", {"who": "dotted"}), PutOp(("a", "b"), "k", {"who": "nested"})])

    dotted, nested = store.batch([GetOp(("a.b",), "k"), GetOp(("a", "b"), "k")])
    assert (dotted.value, nested.value) == ({"who": "dotted"}, {"who": "nested"})
    assert keys_under(store, ("a.b",)) == [(("a.b",), "k")]
    assert keys_under(store, ("a",)) == [(("a", "b"), "k")]


def test_labels_with_nul_or_empty_do_not_collide_either(store):
    store.batch([PutOp(("x\x00y",), "k", {"n": 1}), PutOp(("x",), "y\x00k", {"n": 2}),
                 PutOp(("", "z"), "k", {"n": 3}), PutOp(("z",), "k", {"n": 4})])
    got = store.batch([GetOp(("x\x00y",), "k"), GetOp(("x",), "y\x00k"), GetOp(("", "z"), "k"), GetOp(("z",), "k")])
    assert [item.value["n"] for item in got] == [1, 2, 3, 4]


def test_the_encoding_is_injective_and_unchanged_for_the_labels_put_accepts():
    namespaces = [("a.b",), ("a", "b"), ("a", "b", ""), ("a", "b."), (".a", "b"), ("",), (), ("a",), ('["a"]',),
                  (".",), ("..",), ("a\x00", "b"), ("users", "ann")]
    encoded = [encode_namespace(ns) for ns in namespaces]
    assert len(set(encoded)) == len(namespaces)
    assert encode_namespace(("users", "ann", "notes")) == "users.ann.notes"


def test_items_stored_with_the_period_joined_layout_are_still_read(store):
    space = uuid.UUID("0d4f6a8e-3b9c-4c51-8a2e-7f1d2c3b4a59")  # the store's id namespace, as items were written
    stamp = "2025-01-01T00:00:00+00:00"
    store.backend.upsert([Point(str(uuid.uuid5(space, "users.ann\x00k0")), {
        "kind": "item", "namespace": ["users", "ann"], "key": "k0", "value": {"text": "kept"},
        "ns_prefixes": ["users", "users.ann"], "created_at": stamp, "updated_at": stamp, "seq": 1})])

    [item] = store.batch([GetOp(("users", "ann"), "k0")])
    assert item is not None and item.value == {"text": "kept"}
    assert keys_under(store, ("users",)) == [(("users", "ann"), "k0")]
    store.batch([PutOp(("users", "ann"), "k0", {"text": "updated"})])  # the same item, not a second one
    assert keys_under(store, ("users", "ann")) == [(("users", "ann"), "k0")]
