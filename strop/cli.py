"""The ``strop`` command line. Answers go to stdout; progress, tool events and errors go to stderr."""

from __future__ import annotations

import json
import uuid
from typing import Annotated

import typer
from rich.table import Table

from strop.config import config_path, load_settings
from strop.console import err, examples, friendly_errors, out
from strop.demo import demo
from strop.memory.cli import memory_app
from strop.scenarios.cli import eval_app
from strop.serving.cli import models_app, serve_app
from strop.training.cli import adapters_app, critic_app, improve, trajectories_app
from strop.training.learn_cli import LEARN_EXAMPLES, learn
from strop.training.watch_cli import HISTORY_EXAMPLES, STATUS_EXAMPLES, history, status

app = typer.Typer(
    help="strop: agents that sharpen themselves.\n\nExamples:\n\n"
    "  strop ask \"What is the capital of France?\"\n\n"
    "  strop chat\n\n"
    "  strop eval smoke\n\n"
    "  strop serve status",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
app.add_typer(serve_app, name="serve")
app.add_typer(models_app, name="models")
app.add_typer(trajectories_app, name="trajectories")
trajectories_app.command("learn", epilog=LEARN_EXAMPLES)(learn)
app.add_typer(memory_app, name="memory")
app.add_typer(eval_app, name="eval")
app.add_typer(critic_app, name="critic")
app.add_typer(adapters_app, name="adapters")
app.command(epilog=examples("strop improve", "strop improve --rounds 3", "strop improve --watch",
                            "strop improve --once   # from cron or a systemd timer",
                            "strop improve --abandon --reason 'the judge server is gone'"))(improve)
app.command(epilog=examples("strop demo", "strop demo --docs handbook/ --prompts 16 --gate-limit 40"))(demo)
app.command(epilog=STATUS_EXAMPLES)(status)
app.command(epilog=HISTORY_EXAMPLES)(history)

Thread = Annotated[str | None, typer.Option(help="Conversation thread to continue (kept in the state folder).")]


@app.command(epilog=examples(
    'strop ask "What is the capital of France?"',
    'strop ask "What is 1234 * 5678?"',
    'strop ask --thread trip "Remember that my flight leaves at 9."',
    'STROP_LLM_URL=http://gpu-box:8000/v1 strop ask "Hello"',
))
@friendly_errors
def ask(
    question: Annotated[str, typer.Argument(help="The question for the agent.")],
    thread: Thread = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (default from config).")] = None,
) -> None:
    """Ask the agent one question; shows its tool calls and prints the answer."""
    from strop.agents.agent import open_agent

    settings = load_settings()
    sampling = settings.sampling.model_copy(update={} if temperature is None else {"temperature": temperature})
    with err.status("connecting to the model server") as status:
        agent = open_agent(settings, progress=status.update, sampling=sampling)
    if not _answer(agent, question, thread):
        raise typer.Exit(1)


@app.command(epilog=examples("strop chat", "strop chat --thread trip", "strop chat --plain"))
@friendly_errors
def chat(
    thread: Thread = None,
    plain: Annotated[bool, typer.Option("--plain", help="A line REPL instead of the full-screen app.")] = False,
) -> None:
    """Chat with the agent in the terminal: threads, tool panels, memory, adapters and feedback (/help)."""
    settings = load_settings()
    if not plain:
        from strop.tui.app import ChatApp

        ChatApp(settings, thread=thread).run()
        return
    from strop.agents.agent import open_agent

    with err.status("connecting to the model server") as status:
        agent = open_agent(settings, progress=status.update)
    thread = thread or uuid.uuid4().hex[:8]
    err.print(f"[dim]thread {thread} · /new for a new thread · /quit to leave[/]")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if line in ("/quit", "/exit"):
            break
        if line == "/new":
            thread = uuid.uuid4().hex[:8]
            err.print(f"[dim]thread {thread}[/]")
        elif line:
            _answer(agent, line, thread)


def _answer(agent, question: str, thread: str | None) -> bool:
    """Run one turn, showing tool events on stderr and the answer on stdout; True when answered."""
    marks = {"action": "→", "result": "←"}
    for event in agent.stream(question, thread_id=thread):
        if event.kind in marks:
            style = "dim" if event.ok else "yellow"
            label = f"{event.tool}: " if event.tool else ""
            err.print(f"[{style}]{marks[event.kind]} {label}{event.text}[/]", markup=True, highlight=False)
        elif event.kind == "answer":
            out.print(event.text, markup=False, highlight=False)
        elif event.kind in ("budget", "error"):
            err.print(f"[yellow]{event.text}[/]", highlight=False)
        elif event.kind == "end":
            return event.ok
    return False


@app.command(epilog=examples("strop config", "strop config --json", "STROP_SERVE__PORT=8400 strop config"))
@friendly_errors
def config(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the configuration in force and where each value can be set."""
    flat = _flatten(load_settings().model_dump(mode="json"))
    if as_json:
        print(json.dumps(flat, indent=2))
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

