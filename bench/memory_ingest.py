"""Ingest throughput against raw ``SentenceTransformer.encode`` on the same texts, in one run.

The texts are sentences of the shared SQuAD passages. strop's path reads a JSONL file, chunks,
embeds, computes BM25 vectors and writes to the embedded engine (fresh folder); the baseline only
encodes. Target: ratio >= 0.8.

    .venv/bin/python bench/memory_ingest.py [--n 2000] [--json bench/results/memory_ingest.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from strop.config import Settings
from strop.memory.chunking import sentences
from strop.memory.core import Memory

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "data" / "rag" / "squad_corpus.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="How many texts.")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "memory_ingest.json")
    args = parser.parse_args()
    texts = [s for line in CORPUS.read_text().splitlines() for s in sentences(json.loads(line)["text"])]
    texts = list(dict.fromkeys(t for t in texts if len(t) > 20))[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "texts.jsonl"
        data.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
        memory = Memory(Settings(state_dir=Path(tmp) / "state"))
        memory.embedder.encode(["warm up"])
        began = time.perf_counter()
        memory.embedder.model.encode(texts, batch_size=memory.embedder.batch_size, normalize_embeddings=True)
        raw_s = time.perf_counter() - began
        began = time.perf_counter()
        report = memory.ingest([data], namespace="bench", id_field="id")
        ingest_s = time.perf_counter() - began
        memory.close()
    result = {"texts": len(texts), "stored": report.added, "raw_encode_per_s": round(len(texts) / raw_s, 1),
              "ingest_per_s": round(len(texts) / ingest_s, 1), "ratio": round(raw_s / ingest_s, 3),
              "threads": memory.embedder.threads, "batch_size": memory.embedder.batch_size}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
