"""What users see when something is wrong: a StropError (stops the command) or a Problem (skips one item)."""

from dataclasses import dataclass


class StropError(Exception):
    """A failure with a cause a person can act on.

    The CLI prints ``message``, then ``fix``, then ``detail`` (e.g. the tail of a server log),
    and exits non-zero; no traceback.
    """

    def __init__(self, message: str, fix: str = "", detail: str = ""):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.detail = detail

    def __str__(self) -> str:
        parts = [self.message]
        if self.fix:
            parts.append(f"Fix: {self.fix}")
        if self.detail:
            parts.append(self.detail)
        return "\n".join(parts)


@dataclass
class Problem:
    """One item (a file, a line, a case) that was skipped, where it is, and what to do about it."""

    path: str
    message: str
    fix: str
    line: int | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path

    def __str__(self) -> str:
        return f"{self.where}: {self.message} Fix: {self.fix}"
