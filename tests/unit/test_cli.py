import pytest
import typer.main
from typer.testing import CliRunner

from strop.cli import app
from tests.conftest import free_port

runner = CliRunner()


def all_commands(group, prefix=()):
    for name, command in group.commands.items():
        path = (*prefix, name)
        yield path
        if hasattr(command, "commands"):  # a command group
            yield from all_commands(command, path)


COMMANDS = list(all_commands(typer.main.get_command(app)))


def test_cli_has_the_foundation_commands():
    assert {("ask",), ("config",), ("serve", "start"), ("serve", "stop"), ("serve", "status")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_help_has_examples(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output
    assert "strop " + " ".join(path) in " ".join(result.output.split())


def test_config_json_shows_environment_values(monkeypatch):
    monkeypatch.setenv("STROP_SERVE__PORT", "9555")
    result = runner.invoke(app, ["config", "--json"])
    assert result.exit_code == 0, result.output
    assert '"serve.port": 9555' in result.output


def test_bad_config_is_a_message_not_a_traceback(monkeypatch):
    monkeypatch.setenv("STROP_SERVE__PORT", "not-a-port")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 1
    assert "STROP_SERVE__PORT" in result.output
    assert "Traceback" not in result.output


def test_ask_against_unreachable_server_fails_cleanly(monkeypatch):
    monkeypatch.setenv("STROP_LLM_URL", f"http://127.0.0.1:{free_port()}")
    result = runner.invoke(app, ["ask", "hello"])
    assert result.exit_code == 1
    assert "Cannot reach" in result.output and "Fix:" in result.output
    assert "Traceback" not in result.output


def test_serve_status_without_a_server_exits_non_zero(monkeypatch, tmp_path):
    monkeypatch.setenv("STROP_STATE_DIR", str(tmp_path))
    result = runner.invoke(app, ["serve", "status"])
    assert result.exit_code == 1
    assert "not running" in result.output
