"""The ``strop`` command line. Answers go to stdout; progress and errors go to stderr."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from strop.config import Settings, config_path, load_settings
from strop.errors import StropError

err = Console(stderr=True)
out = Console()

app = typer.Typer(
    help="strop: agents that sharpen themselves.\n\nExamples:\n\n"
    "  strop ask \"What is the capital of France?\"\n\n"
    "  strop serve status\n\n"
    "  strop config",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
serve_app = typer.Typer(help="Run the embedded vLLM server.\n\nExamples:\n\n  strop serve start\n\n"
                        "  strop serve stop", no_args_is_help=True)
models_app = typer.Typer(help="Prepare the embedded model.\n\nExamples:\n\n  strop models prepare\n\n"
                         "  strop models verify", no_args_is_help=True)
app.add_typer(serve_app, name="serve")
app.add_typer(models_app, name="models")


def examples(*lines: str) -> str:
    """A command's help epilog; blank lines keep rich from joining the examples."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def friendly_errors(fn: Callable) -> Callable:
    """Print a StropError as cause + fix (no traceback) and exit non-zero."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StropError as exc:
            err.print(f"[bold red]Error:[/] {exc.message}", highlight=False)
            if exc.fix:
                err.print(f"[bold]Fix:[/] {exc.fix}", highlight=False)
            if exc.detail:
                err.print(exc.detail, markup=False, highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[yellow]Interrupted.[/]")
            raise typer.Exit(130) from None

    return wrapper


@app.command(epilog=examples(
    'strop ask "What is the capital of France?"',
    'strop ask --temperature 0.7 --max-tokens 64 "Name three rivers."',
    'STROP_LLM_URL=http://gpu-box:8000/v1 strop ask "Hello"',
))
@friendly_errors
def ask(
    question: Annotated[str, typer.Argument(help="The question for the agent.")],
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (default from config).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens in the answer.")] = None,
) -> None:
    """Ask the agent one question; starts the embedded server if needed."""
    from strop.agents.graph import build_agent, chat_model, stream_answer
    from strop.serving.endpoint import connect

    settings = load_settings()
    updates = {k: v for k, v in {"temperature": temperature, "max_tokens": max_tokens}.items() if v is not None}
    sampling = settings.sampling.model_copy(update=updates)
    with err.status("connecting to the model server") as status:
        endpoint = connect(settings, progress=status.update)
    agent = build_agent(chat_model(endpoint, sampling, settings.request_timeout_s))
    for text in stream_answer(agent, question):
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if endpoint.managed:
        err.print("[dim]The embedded server keeps running for the next question; `strop serve stop` ends it.[/]")


@app.command(epilog=examples("strop config", "strop config --json", "STROP_SERVE__PORT=8400 strop config"))
@friendly_errors
def config(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the configuration in force and where each value can be set."""
    settings = load_settings()
    flat = _flatten(settings.model_dump(mode="json"))
    if as_json:
        out.print_json(json.dumps(flat))
        return
    source = config_path()
    table = Table(title=f"strop configuration (file: {source}{'' if source.is_file() else ', not present'})")
    for column in ("setting", "value", "environment variable"):
        table.add_column(column)
    for key, value in flat.items():
        table.add_row(key, json.dumps(value), "STROP_" + key.replace(".", "__").upper())
    out.print(table)


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _server(settings: Settings):
    from strop.serving.server import VLLMServer

    if settings.llm_url:
        err.print(f"[yellow]Note:[/] llm_url is set ({settings.llm_url}); strop uses that server, "
                  "not the embedded one.")
    return VLLMServer(settings)


@serve_app.command("start", epilog=examples("strop serve start", "STROP_SERVE__PORT=8400 strop serve start"))
@friendly_errors
def serve_start() -> None:
    """Start the embedded vLLM server (or reuse the healthy one already running)."""
    server = _server(load_settings())
    began = time.monotonic()
    with err.status("starting vLLM") as status:
        record = server.start(progress=status.update)
    err.print(f"vLLM ready at {record.base_url} (pid {record.pid}, model {record.model}, "
              f"{time.monotonic() - began:.1f} s); log: {record.log}")


@serve_app.command("stop", epilog=examples("strop serve stop"))
@friendly_errors
def serve_stop() -> None:
    """Stop the embedded vLLM server and every process it started."""
    record = _server(load_settings()).stop()
    err.print(f"Stopped vLLM (pid {record.pid})." if record else "No embedded vLLM server was running.")


@serve_app.command("status", epilog=examples("strop serve status"))
@friendly_errors
def serve_status() -> None:
    """Show whether the embedded server runs and is healthy (exit code 1 when not)."""
    server = _server(load_settings())
    record = server.running()
    if record is None:
        err.print("Embedded vLLM: not running.")
        raise typer.Exit(1)
    healthy = server.healthy(record)
    table = Table(show_header=False)
    for key, value in (("url", record.base_url), ("pid", record.pid), ("model", record.model),
                       ("healthy", "yes" if healthy else "not yet"),
                       ("up", f"{time.time() - record.started_at:.0f} s"), ("log", record.log)):
        table.add_row(key, str(value))
    out.print(table)
    if not healthy:
        raise typer.Exit(1)


@serve_app.command("logs", epilog=examples("strop serve logs", "strop serve logs -n 100"))
@friendly_errors
def serve_logs(lines: Annotated[int, typer.Option("-n", help="How many lines.")] = 40) -> None:
    """Print the end of the server log."""
    out.print(_server(load_settings()).log_tail(lines), markup=False, highlight=False)


@models_app.command("prepare", epilog=examples("strop models prepare", "strop models prepare --force"))
@friendly_errors
def models_prepare(force: Annotated[bool, typer.Option(help="Convert again even if present.")] = False) -> None:
    """Convert the packaged SmolLM2 GGUF into a checked HF folder (once)."""
    from strop.serving.models import prepare_model

    settings = load_settings()
    with err.status("preparing SmolLM2-135M-Instruct (the first time takes about a minute)"):
        folder = prepare_model(settings.resolved_models_dir, force=force)
    err.print(f"Model ready: {folder}")


@models_app.command("verify", epilog=examples("strop models verify"))
@friendly_errors
def models_verify() -> None:
    """Check the converted model against its checksums."""
    from strop.serving.models import model_dir, verify_model

    folder = model_dir(load_settings().resolved_models_dir)
    manifest = verify_model(folder)
    err.print(f"{folder}: {len(manifest['files'])} files match their checksums.")
