"""Server control without starting vLLM: command line, port conflicts, records, bad models."""

import json
import socket

import pytest

from strop.config import load_settings
from strop.errors import StropError
from strop.serving.server import VLLMServer
from tests.conftest import free_port


@pytest.fixture
def server(tmp_path, monkeypatch) -> VLLMServer:
    monkeypatch.setenv("STROP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("STROP_SERVE__PORT", str(free_port()))
    return VLLMServer(load_settings())


def test_command_serves_on_loopback_eager_with_runtime_lora_and_hermes_tools(server, tmp_path):
    cmd = server.command(tmp_path / "model")
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == str(server.serve.port)
    assert cmd[cmd.index("--tool-call-parser") + 1] == "hermes"
    assert '"disable_any_whitespace": true' in cmd[cmd.index("--structured-outputs-config") + 1]
    for flag in ("--enforce-eager", "--enable-lora", "--enable-auto-tool-choice"):
        assert flag in cmd
    assert cmd[cmd.index("--dtype") + 1] == "float32"  # bfloat16 changed greedy answers for the worse
    assert cmd[cmd.index("--block-size") + 1] == "32"  # finer prefix caching than the CPU default of 128
    assert server.environment()["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # the model in the engine process on every core, not a worker bound to one beside a spinning scheduler
    assert cmd[cmd.index("--distributed-executor-backend") + 1] == "uni"
    assert server.environment()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    alone = server.command(tmp_path / "model", lora=False)  # a server beside, for one merged model
    assert "--enable-lora" not in alone and "--max-lora-rank" not in alone
    assert [a for a in cmd if a not in alone] == ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "2"]


def test_extra_args_and_eager_come_from_config(tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_SERVE__ENFORCE_EAGER", "false")
    monkeypatch.setenv("STROP_SERVE__EXTRA_ARGS", '["--seed", "7"]')
    monkeypatch.setenv("STROP_SERVE__DTYPE", "float16")
    monkeypatch.setenv("STROP_SERVE__BLOCK_SIZE", "128")
    monkeypatch.setenv("STROP_SERVE__EXECUTOR", "mp")
    server = VLLMServer(load_settings())
    cmd = server.command(tmp_path)
    assert cmd[cmd.index("--distributed-executor-backend") + 1] == "mp"
    assert server.environment()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert "--enforce-eager" not in cmd and cmd[cmd.index("--dtype") + 1] == "float16"
    assert cmd[cmd.index("--block-size") + 1] == "128"
    assert cmd[-2:] == ["--seed", "7"]


def test_port_in_use_is_refused_before_anything_starts(server):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", server.serve.port))
        holder.listen()
        with pytest.raises(StropError, match=f"Port {server.serve.port} .* already in use") as info:
            server.start()
    assert "STROP_SERVE__PORT" in info.value.fix
    assert server.running() is None
    assert not server.record_path.exists()


def test_corrupt_model_folder_is_refused_before_anything_starts(server, tmp_path):
    folder = server.settings.resolved_models_dir / "SmolLM2-135M-Instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(StropError, match="no valid strop-manifest.json") as info:
        server.start()
    assert "prepare --force" in info.value.fix
    assert not server.record_path.exists()


def test_stale_record_of_a_dead_process_is_forgotten(server):
    server.dir.mkdir(parents=True)
    record = {"pid": 2**22 + 7, "host": "127.0.0.1", "port": 1, "model": "m", "model_dir": "d",
              "log": "l", "started_at": 0.0}
    server.record_path.write_text(json.dumps(record))
    assert server.running() is None
    assert not server.record_path.exists()
    assert server.stop() is None


def test_log_tail_shows_the_last_lines(server):
    server.dir.mkdir(parents=True)
    server.log_path.write_text("\n".join(f"line {i}" for i in range(100)))
    tail = server.log_tail(3)
    assert tail.splitlines()[1:] == ["line 97", "line 98", "line 99"]
    assert server.last_log_line() == "line 99"
