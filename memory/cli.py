"""``strop memory``: ingest, search, stats, delete, export and bench-retrieval.

Answers (and ``--json``) go to stdout; progress, summaries and errors go to stderr.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from strop.console import err, examples, friendly_errors, out
from strop.errors import StropError

memory_app = typer.Typer(
    help="The Qdrant memory: ingest documents, search them, keep tenants apart.\n\nExamples:\n\n"
    "  strop memory ingest docs/ --namespace team-a\n\n"
    '  strop memory search "how do I reset a password?"\n\n'
    "  strop memory stats",
    no_args_is_help=True,
)


def _memory():
    from strop.memory.core import Memory

    return Memory()


def _epoch(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise StropError(f"{option} {value!r} is not a date or time.",
                         fix=f"Use ISO 8601, e.g. {option} 2025-01-31 or {option} 2025-01-31T12:00") from None


def _filter(namespace: str, source: str | None = None, tags: list[str] | None = None, after: str | None = None,
            before: str | None = None):
    from strop.memory.schema import SearchFilter

    return SearchFilter(namespace=namespace, source=source, tags=tuple(tags or ()),
                        after=_epoch(after, "--after"), before=_epoch(before, "--before"))


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, transient=True)


Namespace = Annotated[str, typer.Option("--namespace", "-n", help="Tenant namespace.")]


@memory_app.command(epilog=examples(
    "strop memory ingest notes.md handbook/",
    "strop memory ingest faq.jsonl --text-field answer --id-field faq_id --namespace support",
    "strop memory ingest papers/ --tag research --json",
))
@friendly_errors
def ingest(
    paths: Annotated[list[Path], typer.Argument(help=".txt, .md or .jsonl files, or folders of them.")],
    namespace: Namespace = "default",
    text_field: Annotated[str, typer.Option(help="JSONL field holding the text.")] = "text",
    id_field: Annotated[str | None, typer.Option(help="JSONL field holding a document id.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag every chunk (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Chunk, embed and store documents; the same data ingested again adds nothing."""
    with _memory() as memory, _progress() as bar:
        task = bar.add_task("embedding", total=None)
        report = memory.ingest(paths, namespace=namespace, text_field=text_field, id_field=id_field,
                               tags=tuple(tag or ()), progress=lambda done, total: bar.update(task, completed=done,
                                                                                              total=total))
    summary = report.summary()
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    err.print(f"Ingested into namespace {namespace!r}: {summary['files']} files, {summary['documents']} documents, "
              f"{summary['chunks']} chunks ({summary['added']} new, {summary['already_stored']} already stored).",
              highlight=False)
    for problem in report.problems:
        err.print(f"[yellow]Skipped[/] {problem}", highlight=False)
    if report.problems:
        err.print(f"[bold]{len(report.problems)} problem(s)[/]; everything else was stored.")
        raise typer.Exit(1)


@memory_app.command(epilog=examples(
    'strop memory search "capital of France"',
    'strop memory search "reset password" --namespace support --mode sparse --k 10',
    'strop memory search "release notes" --tag product --after 2025-01-01 --json',
))
@friendly_errors
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="How many chunks.")] = 5,
    mode: Annotated[str, typer.Option(help="dense | sparse | hybrid")] = "hybrid",
    namespace: Namespace = "default",
    source: Annotated[str | None, typer.Option(help="Only chunks from this source file.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only chunks with this tag (repeatable).")] = None,
    after: Annotated[str | None, typer.Option(help="Only chunks stored at or after (ISO date/time).")] = None,
    before: Annotated[str | None, typer.Option(help="Only chunks stored at or before (ISO date/time).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Search one namespace by meaning (dense), words (sparse, BM25) or both (hybrid)."""
    with _memory() as memory:
        hits = memory.search(query, k=k, mode=mode, where=_filter(namespace, source, tag, after, before))
    if as_json:
        sys.stdout.write(json.dumps([{"id": h.id, "score": h.score, **h.payload} for h in hits]) + "\n")
        return
    if not hits:
        err.print(f"No matches in namespace {namespace!r}.")
        return
    table = Table(title=f"{mode} search in {namespace!r}")
    for column in ("score", "title", "source", "text"):
        table.add_column(column)
    for hit in hits:
        text = hit.payload.get("text", "")
        table.add_row(f"{hit.score:.3f}", str(hit.payload.get("title", "")), str(hit.payload.get("source", "")),
                      text if len(text) < 200 else text[:197] + "...")
    out.print(table)


@memory_app.command(epilog=examples("strop memory stats", "strop memory stats --json"))
@friendly_errors
def stats(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Points per namespace and source, the model and the backend."""
    with _memory() as memory:
        info = memory.stats()
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
        return
    err.print(f"{info['backend']} memory, collection {info['collection']!r}: {info['points']} chunks, "
              f"model {info['model']} ({info['dim']} dims)", highlight=False)
    table = Table()
    for column in ("namespace", "source", "chunks"):
        table.add_column(column)
    for row in info["sources"]:
        table.add_row(row["namespace"], row["source"], str(row["points"]))
    out.print(table)


@memory_app.command(epilog=examples(
    "strop memory delete --namespace team-a --yes",
    "strop memory delete --source handbook/old.md --yes",
    "strop memory delete --before 2024-12-31 --namespace support --yes",
))
@friendly_errors
def delete(
    namespace: Namespace = "default",
    source: Annotated[str | None, typer.Option(help="Only chunks from this source file.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only chunks with this tag (repeatable).")] = None,
    after: Annotated[str | None, typer.Option(help="Only chunks stored at or after (ISO date/time).")] = None,
    before: Annotated[str | None, typer.Option(help="Only chunks stored at or before (ISO date/time).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Delete without asking.")] = False,
) -> None:
    """Delete the chunks of a namespace that match the filters."""
    where = _filter(namespace, source, tag, after, before)
    if not yes and not typer.confirm(f"Delete matching chunks from namespace {namespace!r}?", err=True):
        raise typer.Exit(1)
    with _memory() as memory:
        count = memory.delete(where)
    err.print(f"Deleted {count} chunks from namespace {namespace!r}.", highlight=False)


@memory_app.command(epilog=examples(
    "strop memory export > memory.jsonl",
    "strop memory export --namespace support --output support.jsonl",
))
@friendly_errors
def export(
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Only this namespace.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Write every chunk (id, text and payload) as JSONL; `ingest --id-field doc_id` reads it back."""
    from strop.memory.schema import SearchFilter

    with _memory() as memory:
        rows = memory.export(SearchFilter(namespace) if namespace else None)
        stream = output.open("w") if output else sys.stdout
        count = 0
        try:
            for row in rows:
                stream.write(json.dumps(row) + "\n")
                count += 1
        finally:
            if output:
                stream.close()
    err.print(f"Exported {count} chunks{f' to {output}' if output else ''}.", highlight=False)


@memory_app.command("bench-retrieval", epilog=examples(
    "strop memory bench-retrieval ../shared/data/rag/squad_corpus.jsonl ../shared/data/rag/squad_questions.jsonl",
    "strop memory bench-retrieval corpus.jsonl questions.jsonl --k 10",
))
@friendly_errors
def bench_retrieval(
    corpus: Annotated[Path, typer.Argument(help="JSONL with doc_id, text (and title).")],
    questions: Annotated[Path, typer.Argument(help="JSONL with question and gold_doc_id.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Cut-off for recall and MRR.")] = 5,
) -> None:
    """Recall@k, MRR and latency of dense, sparse and hybrid search on a labelled corpus (JSON on stdout)."""
    from strop.memory.evaluate import bench_retrieval as run

    for path in (corpus, questions):
        if not path.is_file():
            raise StropError(f"{path} does not exist.", fix="Pass the corpus and the questions JSONL files.")
    with _memory() as memory, _progress() as bar:
        task = bar.add_task("ingesting corpus", total=None)
        result = run(memory, corpus, questions, k=k,
                     progress=lambda done, total: bar.update(task, completed=done, total=total))
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
