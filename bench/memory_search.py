"""Search latency at scale on the embedded engine vs qdrant-client local mode, and HNSW recall.

100k points of 384 dims (clustered unit vectors, shaped like sentence embeddings; embedding 100k real
chunks would take hours on a CPU), each with a namespace payload. Both engines get the same points and
the same filtered queries (namespace filter, as every memory search has); qdrant-client's local mode is
the baseline. HNSW recall@10 is measured against exact search on the embedded engine. Targets:
embedded much faster than local mode; recall@10 >= 0.95.

    .venv/bin/python bench/memory_search.py [--n 100000] [--queries 200] [--json bench/results/memory_search.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient

from strop.memory.backends import ClientBackend, EdgeBackend, Layout, Query
from strop.memory.core import KEYWORDS
from strop.memory.schema import Point, SearchFilter

REPO = Path(__file__).resolve().parent.parent
DIM = 384
IN_NS1 = SearchFilter("ns1").where()  # every memory search is inside one namespace


def vectors(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around topic centres; queries come from the same topics as the data, as in real use."""
    data = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, DIM))
    return (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)


def load(backend, data: np.ndarray, batch: int = 2000) -> float:
    began = time.perf_counter()
    for start in range(0, len(data), batch):
        backend.upsert([Point(str(uuid.UUID(int=i + 1)), {"namespace": f"ns{i % 4}"}, dense=data[i].tolist())
                        for i in range(start, min(start + batch, len(data)))])
    backend.optimize()
    return time.perf_counter() - began


def timed(backend, queries: np.ndarray, exact: bool = False, ef: int = 128,
          where=IN_NS1) -> tuple[list[float], list[list[str]]]:
    times, results = [], []
    for q in queries:
        began = time.perf_counter()
        hits = backend.query(Query("dense", where, limit=10, dense=q.tolist(), exact=exact, hnsw_ef=ef))
        times.append((time.perf_counter() - began) * 1000)
        results.append([h.id for h in hits])
    return times, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--baseline-queries", type=int, default=30, help="Local mode is slow; fewer queries.")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "memory_search.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, DIM))
    data, queries = vectors(args.n, centres, rng), vectors(args.queries, centres, rng)
    layout = Layout(dim=DIM, model="synthetic", keywords=KEYWORDS, tenant="namespace")
    with tempfile.TemporaryDirectory() as tmp:
        edge = EdgeBackend(Path(tmp) / "edge", layout)
        edge_load_s = load(edge, data)
        hnsw_ms, approx = timed(edge, queries)
        exact_ms, truth = timed(edge, queries, exact=True)
        recall = statistics.mean(len(set(a) & set(t)) / len(t) for a, t in zip(approx, truth, strict=True))
        _, approx_all = timed(edge, queries, where=None)
        _, truth_all = timed(edge, queries, exact=True, where=None)
        recall_all = statistics.mean(len(set(a) & set(t)) / len(t) for a, t in zip(approx_all, truth_all, strict=True))
        local = ClientBackend("local", "bench", layout, client=QdrantClient(path=str(Path(tmp) / "local")))
        local_load_s = load(local, data)
        local_ms, local_ids = timed(local, queries[: args.baseline_queries])
        agree = statistics.mean(len(set(a) & set(t)) / len(t) for a, t in zip(local_ids, truth, strict=False))
        edge.close()
        local.close()
    edge_p50, local_p50 = statistics.median(hnsw_ms), statistics.median(local_ms)
    result = {"points": args.n, "dims": DIM, "filter": "namespace (1 of 4)",
              "embedded": {"load_s": round(edge_load_s, 1), "p50_ms": round(edge_p50, 3),
                           "p99_ms": round(float(np.percentile(hnsw_ms, 99)), 3),
                           "exact_p50_ms": round(statistics.median(exact_ms), 3)},
              "qdrant_client_local": {"load_s": round(local_load_s, 1), "p50_ms": round(local_p50, 3),
                                      "recall_vs_exact": round(agree, 4)},
              "speedup_p50": round(local_p50 / edge_p50, 1), "hnsw_recall@10": round(recall, 4),
              "hnsw_recall@10_unfiltered": round(recall_all, 4)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
