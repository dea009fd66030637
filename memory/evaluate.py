"""Retrieval quality on a labelled corpus: recall@k and MRR of the gold passage, and latency, per mode."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from strop.errors import StropError
from strop.files import strict_lines
from strop.memory.core import Memory
from strop.memory.schema import MODES, SearchFilter


def load_questions(path: Path) -> list[dict[str, Any]]:
    """``{question, gold_doc_id}`` records; a line lacking either is an error naming the line."""
    questions = []
    for number, record in strict_lines(Path(path), "Make each line one JSON object."):
        if not record.get("question") or not record.get("gold_doc_id"):
            raise StropError(f"{path}:{number}: needs the fields 'question' and 'gold_doc_id'.",
                             fix="Give every question its text and the doc_id of the passage that answers it.")
        questions.append(record)
    return questions


def rank_docs(memory: Memory, question: str, k: int, mode: str, namespace: str) -> list[str]:
    """The first ``k`` distinct documents for ``question`` (several chunks of one document count once)."""
    docs: list[str] = []
    for hit in memory.search(question, k=3 * k, mode=mode, where=SearchFilter(namespace)):
        if hit.payload["doc_id"] not in docs:
            docs.append(hit.payload["doc_id"])
    return docs[:k]


def evaluate(memory: Memory, questions: list[dict[str, Any]], namespace: str, k: int = 5) -> dict[str, Any]:
    """Recall@k, MRR@k and latency (p50/p99, ms) of each search mode."""
    results = {}
    for mode in MODES:
        reciprocal, latencies = [], []
        for q in questions:
            began = time.perf_counter()
            docs = rank_docs(memory, q["question"], k, mode, namespace)
            latencies.append((time.perf_counter() - began) * 1000)
            gold = str(q["gold_doc_id"])
            reciprocal.append(1 / (docs.index(gold) + 1) if gold in docs else 0.0)
        hits = np.array(reciprocal) > 0
        results[mode] = {f"recall@{k}": round(float(hits.mean()), 4), "mrr": round(float(np.mean(reciprocal)), 4),
                         "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                         "p99_ms": round(float(np.percentile(latencies, 99)), 2)}
    return results


def bench_retrieval(memory: Memory, corpus: Path, questions_path: Path, k: int = 5, progress=None) -> dict[str, Any]:
    """Ingest ``corpus`` into a scratch namespace, score every question in every mode, then drop the namespace."""
    questions = load_questions(questions_path)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    report = memory.ingest([corpus], namespace=namespace, id_field="doc_id", progress=progress)
    if report.problems:
        memory.delete(SearchFilter(namespace))
        raise StropError(f"The corpus has {len(report.problems)} problems, first: {report.problems[0]}",
                         fix="Fix the corpus (JSONL with 'doc_id' and 'text') and run again.")
    ingest_s = time.perf_counter() - began
    try:
        modes = evaluate(memory, questions, namespace, k)
    finally:
        memory.delete(SearchFilter(namespace))
    return {"corpus": str(corpus), "questions": len(questions), "k": k, "documents": report.documents,
            "chunks": report.chunks, "ingest_s": round(ingest_s, 2), "backend": memory.settings.memory.backend,
            "model": memory.embedder.name, "modes": modes}
