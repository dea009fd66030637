"""`strop trajectories learn`: successful runs become exemplars agents can be shown ([agent] learned_exemplars)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from strop.config import load_settings
from strop.console import err, examples, friendly_errors
from strop.errors import StropError

LEARN_EXAMPLES = examples("strop trajectories learn", "strop trajectories learn --require clean --limit 500",
                          "strop trajectories learn --scenario arithmetic --json")


@friendly_errors
def learn(require: Annotated[str, typer.Option(
              help="verified: runs that passed their scenario graders or were rated +1; clean: also any run "
                   "that answered without errors or tool errors (never one that failed or was rated -1).")
          ] = "verified",
          limit: Annotated[int | None, typer.Option(help="Only the newest runs, this many.")] = None,
          scenario: Annotated[str | None, typer.Option(help="Only runs of this scenario suite.")] = None,
          as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False) -> None:
    """Store successful runs as exemplars in the memory; learned already, they add nothing.

    Agents show the ones nearest their question when the agent setting learned_exemplars is above 0.
    """
    from strop.tools.toolkit import LazyMemory
    from strop.training.exemplars import learn as learn_exemplars
    from strop.trajectories import TrajectoryStore

    if require not in ("verified", "clean"):
        raise StropError(f"Unknown --require {require!r}.", fix="Use --require verified or --require clean.")
    settings = load_settings()
    if not settings.trajectories_path.exists():
        raise StropError(f"No trajectories yet ({settings.trajectories_path} does not exist).",
                         fix='Run an agent first: strop ask "..." or strop eval smoke')
    memory = LazyMemory(settings)
    try:
        with err.status("learning exemplars from trajectories"):
            report = learn_exemplars(settings, TrajectoryStore(settings.trajectories_path), memory, require=require,
                                     limit=limit, scenario=scenario)
    finally:
        memory.close()
    if as_json:
        print(json.dumps(report.summary()))
        return
    err.print(f"{report.scanned} runs read, {report.qualified} successful: {report.added} new exemplars, "
              f"{report.already_stored} already stored (namespace {settings.agent.exemplar_namespace!r}).")
    for reason, count in sorted(report.reasons.items()):
        err.print(f"  left out, {reason}: {count}")
    if not settings.agent.learned_exemplars:
        err.print("Agents show them once the agent setting learned_exemplars is above 0 "
                  "(e.g. STROP_AGENT__LEARNED_EXEMPLARS=2).")
