"""Saved evaluation runs: ``<state>/eval/<run id>/`` holds ``run.json`` (what was asked) and ``results.jsonl``
(one line per episode).

Each episode's result is appended and fsynced as soon as it is graded, so an interrupted or killed run
keeps every finished case and ``strop eval --resume`` runs only the rest. A torn last line (a kill
mid-write) is ignored on read. ``run.json`` is replaced atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from strop.errors import StropError

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
        """Every saved episode result, in the order they finished."""
        path = self.dir / RESULTS_FILE
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill; that episode runs again on --resume
        return records

    def append(self, record: dict[str, Any]) -> None:
        with (self.dir / RESULTS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def save(self) -> None:
        tmp = self.dir / f".{RUN_FILE}.tmp"
        tmp.write_text(json.dumps(self.meta, indent=2, ensure_ascii=False), encoding="utf-8")
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / RUN_FILE)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run's lock: two processes never add results to one run."""
        with (self.dir / ".lock").open("w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StropError(f"Run {self.id} is being run by another strop process.",
                                 fix="Wait for it to finish, or start a new run.") from None
            yield


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

    def list(self) -> list[Run]:
        """Every readable run, oldest first."""
        runs = []
        for path in sorted(self.root.glob(f"*/{RUN_FILE}")):
            try:
                runs.append(Run(path.parent, json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, json.JSONDecodeError):
                continue
        return runs
