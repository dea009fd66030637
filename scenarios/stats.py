"""Exact statistics for paired pass/fail comparisons of two runs over the same cases.

Only the cases whose result changed (the discordant pairs) carry information about which side is
better: with ``wins`` cases that B passes and A fails and ``losses`` the other way round, the exact
McNemar test is the sign test of ``wins`` among ``wins + losses`` against a fair coin.

The interval of the pass-rate difference B - A is the Clopper-Pearson interval of the share of wins
among the discordant cases, mapped to the difference: with ``n`` cases and ``d = wins + losses``
discordant ones, ``diff = (d / n) * (2 * share - 1)``. It is chosen because it is the exact inversion
of the same binomial test, so interval and p cannot disagree: the two-sided ``1 - alpha`` interval
excludes 0 exactly when the two-sided exact p is below ``alpha``, and its lower bound is above 0
exactly when the one-sided p (B better) is below ``alpha / 2``. It is conditional on the observed
number of discordant cases (``d / n`` is taken as known), the usual price of an exact McNemar
interval: it never reaches beyond ``d / n`` (when every changed case went one way, its far end is the
observed difference). A Newcombe interval would also count that uncertainty, but need not agree with
the test.

Pure functions of counts, exact arithmetic (``math.comb``); no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def p_cell(p: float) -> str:
    """A p-value as people read it: three decimals, or "< 0.001" where three decimals would round it to 0."""
    return "< 0.001" if p < 0.0005 else f"{p:.3f}"


def p_text(p: float) -> str:
    """``p = 0.011`` or ``p < 0.001``, for a sentence."""
    cell = p_cell(p)
    return f"p {cell}" if cell.startswith("<") else f"p = {cell}"


def binomial_tail(k: int, n: int, p: float = 0.5) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p == 0.5:  # exact in integers: the common case, and free of rounding
        return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n
    return min(1.0, sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def sign_p(wins: int, losses: int, alternative: str = "greater") -> float:
    """The exact McNemar (sign test) p over the discordant cases.

    ``greater``: B better than A (wins this many or more by chance); ``less``: B worse; ``two-sided``:
    twice the smaller tail, at most 1.
    """
    n = wins + losses
    if alternative == "greater":
        return binomial_tail(wins, n)
    if alternative == "less":
        return binomial_tail(losses, n)
    if alternative == "two-sided":
        return min(1.0, 2 * min(binomial_tail(wins, n), binomial_tail(losses, n)))
    raise ValueError(f"alternative must be greater, less or two-sided, not {alternative!r}")


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval of a binomial share; each tail holds (1 - level) / 2."""
    if n == 0:
        return 0.0, 1.0
    tail = (1 - level) / 2
    low = 0.0 if successes == 0 else _solve(lambda q: binomial_tail(successes, n, q) - tail)
    high = 1.0 if successes == n else _solve(lambda q: tail - (1 - binomial_tail(successes + 1, n, q)))
    return low, high


def _solve(rising, lo: float = 0.0, hi: float = 1.0) -> float:
    """The root of an increasing function on [lo, hi], by bisection (the tails are monotone in q)."""
    for _ in range(60):
        mid = (lo + hi) / 2
        if rising(mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class Paired:
    """A paired comparison over ``cases`` cases: the difference B - A of pass rates, its exact interval and p."""

    cases: int
    wins: int
    losses: int
    low: float
    high: float
    p_two_sided: float
    p_better: float  # one-sided: B better than A
    p_worse: float  # one-sided: B worse than A

    @property
    def diff(self) -> float:
        return (self.wins - self.losses) / self.cases if self.cases else 0.0


def paired(cases: int, wins: int, losses: int, level: float = 0.95) -> Paired:
    """Exact test and interval for ``wins`` and ``losses`` among ``cases`` paired pass/fail cases."""
    if wins < 0 or losses < 0 or wins + losses > cases:
        raise ValueError(f"need 0 <= wins + losses <= cases, got {wins} + {losses} of {cases}")
    discordant = wins + losses
    if discordant == 0:
        low = high = 0.0
    else:
        share_low, share_high = clopper_pearson(wins, discordant, level)
        scale = discordant / cases
        low, high = scale * (2 * share_low - 1), scale * (2 * share_high - 1)
    return Paired(cases, wins, losses, low, high, sign_p(wins, losses, "two-sided"),
                  sign_p(wins, losses, "greater"), sign_p(wins, losses, "less"))
