"""Split text into chunks of whole sentences, with a few sentences of overlap between neighbours."""

from __future__ import annotations

import re

# A sentence ends at . ! ? (optionally followed by a closing quote or bracket) before whitespace and
# an upper-case letter, digit or opening quote; a blank line always ends one.
_START = r"(?=[\"'(\[]?[A-Z0-9])"
_SENTENCE_END = re.compile(rf"(?<=[.!?])\s+{_START}|(?<=[.!?][\"')\]])\s+{_START}|\n\s*\n")


def sentences(text: str) -> list[str]:
    """The sentences of ``text``, whitespace-trimmed, empty ones dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _split_long(sentence: str, max_chars: int) -> list[str]:
    """A sentence longer than a chunk is cut at word boundaries (at a character boundary if one word is)."""
    pieces, current = [], ""
    for word in sentence.split():
        while len(word) > max_chars:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:max_chars])
            word = word[max_chars:]
        if current and len(current) + 1 + len(word) > max_chars:
            pieces.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        pieces.append(current)
    return pieces


def chunk_text(text: str, max_chars: int = 1200, overlap: int = 200) -> list[str]:
    """Chunks of at most ``max_chars`` made of whole sentences.

    A text no longer than ``max_chars`` is one chunk. Each later chunk starts with the last sentences
    of the one before, up to ``overlap`` characters, so a fact that spans a boundary is found whole.
    """
    text = text.strip()
    if not text:
        return []
    if len(text) <= max_chars:
        return [text]
    units = [piece for s in sentences(text) for piece in (_split_long(s, max_chars) if len(s) > max_chars else [s])]
    chunks: list[str] = []
    current: list[str] = []
    fresh = 0  # sentences in ``current`` not carried over from the previous chunk
    for unit in units:
        if current and len(" ".join([*current, unit])) > max_chars:
            chunks.append(" ".join(current))
            current = _tail(current, overlap, max_chars - len(unit) - 1)
            fresh = 0
        current.append(unit)
        fresh += 1
    if current and fresh:
        chunks.append(" ".join(current))
    return chunks


def _tail(units: list[str], overlap: int, room: int) -> list[str]:
    """The last sentences of ``units`` totalling at most ``overlap`` characters (and fitting in ``room``)."""
    tail: list[str] = []
    size = 0
    for unit in reversed(units):
        size += len(unit) + 1
        if size > min(overlap, room):
            break
        tail.insert(0, unit)
    return tail
