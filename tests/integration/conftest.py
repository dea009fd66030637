"""One real vLLM server for the whole test session, in a state folder of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from strop.config import ServeSettings, load_settings
from strop.serving.models import prepare_model
from strop.serving.server import ServerRecord, VLLMServer
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Live:
    env: dict[str, str]  # STROP_* variables that point strop at the session's server
    record: ServerRecord


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The model `make setup` converted (converted here if the tests run without it)."""
    folder = REPO / ".strop" / "models"
    prepare_model(folder)
    return folder


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, models_dir) -> Live:
    state = tmp_path_factory.mktemp("live-state")
    port = free_port()
    server = VLLMServer(load_settings(state_dir=state, models_dir=models_dir, serve=ServeSettings(port=port)))
    record = server.start()
    env = {"STROP_STATE_DIR": str(state), "STROP_MODELS_DIR": str(models_dir), "STROP_SERVE__PORT": str(port)}
    yield Live(env, record)
    server.stop()


@pytest.fixture
def live(live_server, monkeypatch) -> Live:
    for key, value in live_server.env.items():
        monkeypatch.setenv(key, value)
    return live_server


def strop(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the strop CLI in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "strop", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def ctrl_c_enabled() -> None:
    """In a child about to run strop: Ctrl-C (SIGINT) interrupts, as in a terminal, even when the tests were
    started in the background by a shell, which makes children ignore it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
