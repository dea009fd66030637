"""Read .txt, .md and .jsonl files (or folders of them) into documents, and chunk them into points.

Bad input never stops a batch: each problem is recorded with its file, line and field and the fix,
and the remaining files still ingest.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from strop.errors import Problem
from strop.files import problems_of

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
SUFFIXES = TEXT_SUFFIXES | {".jsonl"}
# Payload keys the memory writes itself; same-named JSONL fields are kept under "fields".
RESERVED = {"text", "namespace", "source", "title", "chunk", "chunks", "doc_id", "created", "created_at", "tags"}
_ID_SPACE = uuid.UUID("6c1f3a52-8d1e-4f7b-9a43-2f5e1c0b7d11")


@dataclass
class Document:
    """A text to store, with where it came from."""

    text: str
    source: str
    title: str
    doc_id: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    """A piece of a document as it will be stored (vectors are added by the memory)."""

    id: str
    text: str
    payload: dict[str, Any]

    @property
    def embed_text(self) -> str:
        """What the models see: the title gives a passage its topic."""
        title = self.payload.get("title")
        return f"{title}. {self.text}" if title and title not in self.text[: len(title) + 5] else self.text


def iter_files(paths: Iterable[str | Path], problems: list[Problem]) -> Iterator[Path]:
    """The supported files named or found (recursively, skipping hidden ones) under folders."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                problems.append(Problem(str(path), "The folder holds no .txt, .md or .jsonl files.",
                                        "Name the files or a folder that contains some."))
            yield from found
        elif not path.exists():
            problems.append(Problem(str(path), "No such file or folder.", "Check the path."))
        elif path.suffix.lower() not in SUFFIXES:
            problems.append(Problem(str(path), f"Unsupported file type {path.suffix or '(none)'!r}.",
                                    "Convert it to .txt, .md or .jsonl."))
        else:
            yield path


def _read_text(path: Path, problems: list[Problem]) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append(Problem(str(path), f"Cannot read the file ({exc.strerror}).",
                                "Check that it exists and that you may read it."))
        return None
    if b"\0" in data[:8192]:
        problems.append(Problem(str(path), "The file is binary, not text.", "Ingest text (.txt, .md, .jsonl) only."))
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(Problem(str(path), f"The file is not UTF-8 (byte {exc.start}).",
                                "Re-encode it as UTF-8, e.g. `iconv -t UTF-8`."))
        return None
    if not text.strip():
        problems.append(Problem(str(path), "The file is empty.", "Remove it from the batch or add text."))
        return None
    return text


def _markdown_title(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return None


def read_documents(paths: Iterable[str | Path], problems: list[Problem], text_field: str = "text",
                   id_field: str | None = None) -> Iterator[Document]:
    """Every document in ``paths``; problems are appended to ``problems`` and skipped."""
    for path in iter_files(paths, problems):
        text = _read_text(path, problems)
        if text is None:
            continue
        if path.suffix.lower() == ".jsonl":
            yield from _jsonl_documents(path, text, problems, text_field, id_field)
        else:
            title = (_markdown_title(text) if path.suffix.lower() != ".txt" else None) or path.stem
            yield Document(text=text, source=str(path), title=title, doc_id=str(path.resolve()))


def _jsonl_documents(path: Path, text: str, problems: list[Problem], text_field: str,
                     id_field: str | None) -> Iterator[Document]:
    for number, record in problems_of(path, problems, "Make each line one JSON object.", text):
        body = record.get(text_field)
        if not isinstance(body, str) or not body.strip():
            problem = "is missing" if text_field not in record else "is empty or not a string"
            names = ", ".join(record) or "none"
            problems.append(Problem(str(path), f"Field {text_field!r} {problem} (fields: {names}).",
                                    f"Add a text in {text_field!r}, or pass --text-field with the right name.",
                                    number))
            continue
        if id_field and record.get(id_field) in (None, ""):
            problems.append(Problem(str(path), f"Field {id_field!r} is missing.",
                                    f"Add {id_field!r} to the line, or pass --id-field with the right name.", number))
            continue
        doc_id = str(record[id_field]) if id_field else f"{path}:{number}"
        rest = {k: v for k, v in record.items() if k not in (text_field, id_field)}
        title = rest.pop("title", None)
        yield Document(text=body, source=str(path), title=str(title) if title else "", doc_id=doc_id, fields=rest)


def point_id(namespace: str, key: str, text: str) -> str:
    """A stable id from namespace, document key and content, so ingesting the same data again adds nothing."""
    digest = hashlib.sha256(f"{namespace}\x1f{key}\x1f{text}".encode()).hexdigest()
    return str(uuid.uuid5(_ID_SPACE, digest))


def chunk_document(doc: Document, namespace: str, chunker, tags: tuple[str, ...] = (),
                   now: float | None = None) -> list[Chunk]:
    """The document's chunks with their payload (source, title, chunk index, namespace, created time)."""
    now = time.time() if now is None else now
    pieces = chunker(doc.text)
    extra = {k: v for k, v in doc.fields.items() if k not in RESERVED}
    kept = {k: v for k, v in doc.fields.items() if k in RESERVED and k != "tags"}
    if kept:
        extra["fields"] = kept
    doc_tags = [t for t in doc.fields.get("tags", []) if isinstance(t, str)] if isinstance(
        doc.fields.get("tags"), list) else []
    all_tags = sorted(set(doc_tags) | set(tags))
    chunks = []
    for index, piece in enumerate(pieces):
        payload = {**extra, "text": piece, "namespace": namespace, "source": doc.source, "title": doc.title,
                   "doc_id": doc.doc_id, "chunk": index, "chunks": len(pieces), "tags": all_tags,
                   "created_at": now, "created": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")}
        chunks.append(Chunk(point_id(namespace, f"{doc.doc_id}#{index}", piece), piece, payload))
    return chunks
