"""Saved evaluation runs: ``<state>/eval/<run id>/`` holds ``run.json`` (what was asked) and ``results.jsonl``
(one line per episode).

Each episode's result is appended and fsynced as soon as it is graded, so an interrupted or killed run
keeps every finished case and ``strop eval --resume`` runs only the rest. A torn last line (a kill
mid-write) is ignored on read. ``run.json`` is replaced atomically.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from strop.errors import StropError
from strop.files import append_line, exclusive, read_lines, write_atomic

RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"


@dataclass(frozen=True)
class EvalOptions:
    adapter: str | None = None
    repeat: int = 1
    concurrency: int = 8
    limit: int | None = None
    split: str = "gate"  # gate | train | all


@dataclass
class Run:
    dir: Path
    meta: dict[str, Any]

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def options(self) -> EvalOptions:
        return EvalOptions(**self.meta["options"])

    @property
    def finished(self) -> bool:
        return self.meta.get("finished_at") is not None

    def records(self) -> list[dict[str, Any]]:
        """Every saved episode result, in the order they finished (an episode torn by a kill runs again)."""
        return read_lines(self.dir / RESULTS_FILE)

    def append(self, record: dict[str, Any]) -> None:
        append_line(self.dir / RESULTS_FILE, record)

    def save(self) -> None:
        write_atomic(self.dir / RUN_FILE, json.dumps(self.meta, indent=2, ensure_ascii=False))

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Hold the run's lock: two processes never add results to one run."""
        return exclusive(self.dir / ".lock", StropError(f"Run {self.id} is being run by another strop process.",
                                                        fix="Wait for it to finish, or start a new run."))


class RunStore:
    """The evaluation runs kept in the state folder."""

    def __init__(self, root: Path):
        self.root = root

    def create(self, options: EvalOptions, model: str, suites: dict[str, dict[str, Any]]) -> Run:
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
        run = Run(self.root / run_id, {"id": run_id, "created_at": time.time(), "finished_at": None,
                                       "model": model, "options": asdict(options), "suites": suites})
        run.dir.mkdir(parents=True)
        run.save()
        return run

    def open(self, ref: str) -> Run:
        """A run by id, unique id prefix, or ``last``.

        Raises:
            StropError: when no run (or more than one) matches.
        """
        runs = self.list()
        matches = runs[-1:] if ref == "last" else [r for r in runs if r.id.startswith(ref)]
        if len(matches) != 1:
            known = ", ".join(r.id for r in runs[-5:]) or "none yet"
            problem = "matches several runs" if matches else "matches no run"
            raise StropError(f"{ref!r} {problem} in {self.root}.",
                             fix=f"Give a run id from `strop eval runs` (latest: {known}).")
        return matches[0]

    def recent_records(self, runs: int = 12) -> list[dict[str, Any]]:
        """The episode results of the latest ``runs`` runs, oldest first."""
        return [record for run in self.list()[-runs:] for record in run.records()]

    def list(self) -> list[Run]:
        """Every readable run, oldest first."""
        runs = []
        for path in sorted(self.root.glob(f"*/{RUN_FILE}")):
            try:
                runs.append(Run(path.parent, json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, json.JSONDecodeError):
                continue
        return runs


Expected = Callable[[str, str], float]  # (suite, case id) -> seconds an episode is expected to take


def expected_seconds(records: Iterable[dict[str, Any]]) -> Expected:
    """How long an episode of a case is expected to take, from earlier episodes (oldest first): the case's latest,
    else its suite's mean, else 0.

    Runs start the longest expected episodes first: a long one started last runs nearly alone at the end (the
    engine batches what is in flight), and a few runaway tool calls made the gate's last minute.
    """
    by_case: dict[tuple[str, str], float] = {}
    by_suite: dict[str, list[float]] = {}
    for record in records:
        seconds = record.get("latency_s")
        if isinstance(seconds, int | float) and "suite" in record and "case" in record:
            by_case[(record["suite"], record["case"])] = seconds
            by_suite.setdefault(record["suite"], []).append(seconds)
    means = {suite: sum(values) / len(values) for suite, values in by_suite.items()}
    return lambda suite, case: by_case.get((suite, case), means.get(suite, 0.0))
