"""Crash-safe file helpers shared by every store: atomic replacement, fsynced appends, JSON lines, locks.

JSON lines have one reader, ``json_lines``, and two policies on top of it. Records strop appended itself
(``read_lines``): a line a kill tore is skipped, the rest is read, so a store stays readable after any
crash. Files a person wrote or passed in: every bad line is a ``Problem`` naming the file and line, and
the caller decides whether that skips the line (``problems``) or stops with an error (``BadLine.error``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strop.errors import Problem, StropError


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: a crash leaves the old file or the new one, never half of either."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def plain_name(name: str, what: str) -> str:
    """``name`` when it can be one file or folder name inside a folder strop builds paths in (a thread id, an
    adapter name, a namespace); anything that could reach outside that folder is refused."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or Path(name).is_absolute():
        raise StropError(f"The {what} {name!r} cannot name a file: it must be one plain name, without '/', '\\', "
                         "'..' or a NUL character, so that what strop writes for it stays inside its folder.",
                         fix=f"Choose another {what}: letters, digits, '-', '_' and '.' are safe.")
    return name


def inside(folder: Path, name: str, what: str) -> Path:
    """``folder / name`` for a ``name`` from outside strop (see ``plain_name``)."""
    return folder / plain_name(name, what)


def sha256_file(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks (model weights are hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it: once this returns, the record survives a crash.

    A last line torn by an earlier kill gets its newline first, so it stays one bad line of its own
    instead of swallowing this record.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as fh:
        torn = False
        if fh.seek(0, os.SEEK_END) > 0:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
        fh.write((b"\n" if torn else b"") + (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


@dataclass(frozen=True)
class BadLine:
    """A line of a JSON-lines file that is not one JSON object."""

    path: Path
    line: int
    why: str

    def problem(self, fix: str = "Make each line one JSON object.") -> Problem:
        return Problem(str(self.path), self.why, fix, self.line)

    def error(self, fix: str = "Make each line one JSON object.") -> StropError:
        return StropError(f"{self.path}:{self.line}: {self.why}", fix=fix)


def json_lines(path: Path, text: str | None = None) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """``(line number, object)`` for each non-blank line of ``path`` (or of ``text`` already read from it); a
    line that is not a JSON object comes as a ``BadLine`` in place of its object."""
    lines = text.splitlines() if text is not None else path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, BadLine(path, number, f"Not valid JSON ({exc.msg}, column {exc.colno}).")
            continue
        if isinstance(record, dict):
            yield number, record
        else:
            yield number, BadLine(path, number, f"The line is a JSON {type(record).__name__}, not a JSON object.")


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The records strop appended to ``path`` (none if it does not exist); lines torn by a kill are skipped."""
    if not path.exists():
        return []
    return [record for _, record in json_lines(path) if not isinstance(record, BadLine)]


def problems_of(path: Path, problems: list[Problem], fix: str = "Correct or delete that line.",
                text: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """The objects of a JSON-lines file a person wrote; each bad line is skipped and added to ``problems``."""
    for number, record in json_lines(path, text):
        if isinstance(record, BadLine):
            problems.append(record.problem(fix))
        else:
            yield number, record


def strict_lines(path: Path, fix: str = "Correct or delete that line.") -> Iterator[tuple[int, dict[str, Any]]]:
    """The objects of a JSON-lines file a person wrote; the first bad line stops with an error naming it."""
    for number, record in json_lines(path):
        if isinstance(record, BadLine):
            raise record.error(fix)
        yield number, record


@contextlib.contextmanager
def exclusive(lock_path: Path, busy: StropError) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` for the block, or raise ``busy`` if another process holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        yield


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts), e.g. the writer of a lock or heartbeat."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
