"""Shared fixtures. Every test gets a clean STROP_* environment and its own state folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path_factory):
    """Tests never read the developer's strop.toml or STROP_* variables."""
    for key in list(os.environ):
        if key.startswith("STROP_"):
            monkeypatch.delenv(key)
    config = tmp_path_factory.mktemp("config") / "strop.toml"
    config.touch()
    monkeypatch.setenv("STROP_CONFIG", str(config))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
