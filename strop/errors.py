"""The one error type users see: what went wrong and how to fix it."""


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
