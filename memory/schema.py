"""Plain data shared by the backends: points, hits and a backend-neutral filter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["dense", "sparse", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "sparse", "hybrid")


@dataclass(frozen=True)
class Sparse:
    """A sparse vector: token ids and their weights."""

    indices: list[int]
    values: list[float]


@dataclass
class Point:
    """One stored point. Vectors are optional (a store item may carry none)."""

    id: str
    payload: dict[str, Any]
    dense: list[float] | None = None
    sparse: Sparse | None = None


@dataclass
class Hit:
    """A point returned by a search, scroll or lookup."""

    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class Match:
    """``key`` equals ``value`` (for a list payload: any element equals it)."""

    key: str
    value: str | int | bool


@dataclass(frozen=True)
class MatchAny:
    """``key`` equals one of ``values``."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Range:
    """Numeric range on ``key``; None bounds are open."""

    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


Condition = Match | MatchAny | Range


@dataclass(frozen=True)
class Where:
    """All of ``must`` hold and none of ``must_not`` does."""

    must: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()

    def __and__(self, other: Where) -> Where:
        return Where(self.must + other.must, self.must_not + other.must_not)


@dataclass(frozen=True)
class SearchFilter:
    """The filters users pass to a memory search; every search is inside one namespace."""

    namespace: str = "default"
    source: str | None = None
    tags: tuple[str, ...] = ()
    after: float | None = None
    before: float | None = None
    extra: dict[str, str | int | bool] = field(default_factory=dict)

    def where(self) -> Where:
        """The backend-neutral filter (tags: a point must carry every tag given)."""
        must: list[Condition] = [Match("namespace", self.namespace)]
        if self.source:
            must.append(Match("source", self.source))
        must += [Match("tags", tag) for tag in self.tags]
        if self.after is not None or self.before is not None:
            must.append(Range("created_at", gte=self.after, lte=self.before))
        must += [Match(key, value) for key, value in self.extra.items()]
        return Where(tuple(must))
