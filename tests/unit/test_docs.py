"""The README and docs/measurements.md point into each other: every link to a section or a file of the repository
lands on one that exists (GitHub's heading anchors), so moving a section cannot leave a reader at a dead link."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "docs" / "measurements.md"]
LINK = re.compile(r"\]\(([^)\s]*)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower())
    return text.replace(" ", "-")


@functools.cache
def anchors(path: Path) -> set[str]:
    found, fenced = set(), False
    for line in path.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#{1,6} ", line):
            found.add(anchor(line))
    return found


def test_headings_give_githubs_anchors():
    assert anchor("### Suites already solved: `improve.skip_solved` (measured, not adopted)") == \
        "suites-already-solved-improveskip_solved-measured-not-adopted"
    assert anchor("## What each part of a round buys (one round's rollouts, trained six ways)") == \
        "what-each-part-of-a-round-buys-one-rounds-rollouts-trained-six-ways"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_into_the_repository_lands(doc):
    dead = []
    for target in LINK.findall(doc.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, section = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists() or (section and linked.suffix == ".md" and section not in anchors(linked)):
            dead.append(target)
    assert not dead, f"{doc.name}: links that land nowhere: {dead}"
