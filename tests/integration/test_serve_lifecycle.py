"""`strop serve` as a user drives it: reuse, stop, Ctrl-C and crashes leave no process behind."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from strop.serving.server import live_group_members
from tests.conftest import free_port
from tests.integration.conftest import ctrl_c_enabled, strop

pytestmark = pytest.mark.integration


def env_for(tmp_path, models_dir, **extra) -> dict[str, str]:
    return {"STROP_STATE_DIR": str(tmp_path / "state"), "STROP_MODELS_DIR": str(models_dir),
            "STROP_SERVE__PORT": str(free_port()), **extra}


def recorded_pid(tmp_path) -> int:
    return json.loads((tmp_path / "state" / "serve" / "server.json").read_text())["pid"]


def test_start_twice_reuses_then_stop_leaves_no_process(tmp_path, models_dir):
    env = env_for(tmp_path, models_dir)
    first = strop("serve", "start", env=env)
    assert first.returncode == 0, first.stderr
    pid = recorded_pid(tmp_path)
    assert len(live_group_members(pid)) >= 2  # the API server and its engine process

    second = strop("serve", "start", env=env)
    assert second.returncode == 0, second.stderr
    assert recorded_pid(tmp_path) == pid
    assert f"pid {pid}" in second.stderr
    assert strop("serve", "status", env=env).returncode == 0

    stopped = strop("serve", "stop", env=env)
    assert stopped.returncode == 0 and f"pid {pid}" in stopped.stderr
    assert live_group_members(pid) == []
    assert strop("serve", "status", env=env).returncode == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_interrupted_start_leaves_no_process(tmp_path, models_dir, sig):
    env = env_for(tmp_path, models_dir)
    cli = subprocess.Popen([sys.executable, "-m", "strop", "serve", "start"], env={**os.environ, **env},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_enabled)
    record = tmp_path / "state" / "serve" / "server.json"
    deadline = time.monotonic() + 60
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    pid = recorded_pid(tmp_path)
    time.sleep(3)  # vLLM is importing
    cli.send_signal(sig)
    _, stderr = cli.communicate(timeout=60)
    assert cli.returncode == 130, stderr
    assert "Interrupted" in stderr
    assert live_group_members(pid) == []
    assert not record.exists()


def test_server_dying_during_start_reports_its_log(tmp_path, models_dir):
    env = env_for(tmp_path, models_dir, STROP_SERVE__EXTRA_ARGS='["--no-such-flag"]')
    result = strop("serve", "start", env=env)
    assert result.returncode == 1
    assert "vLLM exited" in result.stderr and "while starting" in result.stderr
    assert "--no-such-flag" in result.stderr  # from the log tail
    assert "Traceback (most recent call last)" not in result.stderr.split("---")[0]
    assert not (tmp_path / "state" / "serve" / "server.json").exists()

