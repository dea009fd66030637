"""`strop serve ...` and `strop models ...`."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from strop.config import Settings, load_settings
from strop.console import err, examples, friendly_errors, out
from strop.serving.server import VLLMServer

serve_app = typer.Typer(help="Run the embedded vLLM server.\n\nExamples:\n\n  strop serve start\n\n"
                        "  strop serve stop", no_args_is_help=True)
models_app = typer.Typer(help="Prepare the embedded model.\n\nExamples:\n\n  strop models prepare\n\n"
                         "  strop models verify", no_args_is_help=True)


def _server(settings: Settings) -> VLLMServer:
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
