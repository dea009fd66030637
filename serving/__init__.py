"""Serving: the embedded model (bootstrap from PyPI), the vLLM process, and endpoints."""
