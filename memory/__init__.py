"""Qdrant memory: embeddings, ingest, retrieval and a LangGraph store."""
