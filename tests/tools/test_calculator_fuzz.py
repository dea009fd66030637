"""Property tests: hostile input never runs code, hangs or crashes; valid arithmetic matches exact Fractions."""

from __future__ import annotations

import re
import sys
import threading
import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strop.tools import CalculatorError, evaluate

MAX_SECONDS = 0.5
RESULT = re.compile(r"-?\d+(\.\d+)?(e[+-]\d+)?")


class AuditRecorder:
    """Records audit events raised on one thread while active; the hook cannot be removed, so install it once."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple]] = []
        self.thread: int | None = None
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if self.thread == threading.get_ident():
            self.events.append((event, args))

    def run(self, fn, *args):
        self.events, self.thread = [], threading.get_ident()
        try:
            return fn(*args)
        finally:
            self.thread = None

    def unexpected(self) -> list[tuple[str, tuple]]:
        """Everything but the one ast.parse of the expression (a 'compile' event named '<calculator>')."""
        return [(e, a) for e, a in self.events if not (e == "compile" and a[1] == "<calculator>")]


@pytest.fixture(scope="module")
def audit() -> AuditRecorder:
    return AuditRecorder()


def test_audit_recorder_sees_code_running(audit):
    """The recorder would notice if evaluate compiled, imported or opened anything."""
    audit.run(lambda: (compile("1", "<elsewhere>", "eval"), __import__("json.tool"), open(__file__).close()))
    events = {event for event, _ in audit.unexpected()}
    assert {"compile", "import", "open"} <= events


# --- a grammar of hostile expressions ------------------------------------------------------------------------------

ATOMS = st.sampled_from([
    "1", "0", "9" * 120, "1e999999", "1e-99999", "0.1", "1_0", "0x1F", "0b11", "0o7", "3j", "1.e5", ".5",
    "os", "__import__", "x", "e", "π", "True", "None", "...", "__builtins__", "globals()", "open",
    "'a'", '"os"', "b'x'", "f'{1}'", "f'{__import__(\"os\")}'", "()", "[]", "{}", "{1: 2}",
    "١٢٣", "１２", "²", "٣.٥", "\u00a0", "\x00", "∞", "NaN", "inf",
])
UNARY = st.sampled_from(["-", "+", "~", "not ", "−", "await ", "*", "**", "lambda: ", "yield "])
BINARY = st.sampled_from([" + ", " - ", " * ", " / ", " // ", " % ", " ** ", "^", " x ", "×", "÷", " @ ", " << ",
                          " >> ", " & ", " | ", " and ", " or ", " < ", " == ", " if 1 else ", ",", ", ", " for x in "])


def _combine(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(inner, BINARY, inner).map("".join),
        st.tuples(UNARY, inner).map("".join),
        inner.map(lambda e: f"({e})"),
        inner.map(lambda e: f"{e}.__class__.__bases__[0].__subclasses__()"),
        st.tuples(inner, inner).map(lambda p: f"{p[0]}({p[1]})"),
        st.tuples(inner, inner).map(lambda p: f"{p[0]}[{p[1]}]"),
        inner.map(lambda e: f"[{e} for _ in range(10**9)]"),
        inner.map(lambda e: f"(y := {e})"),
        inner.map(lambda e: f"lambda: {e}"),
        inner.map(lambda e: f"*{e}, 1"),
    )


def _deep(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    depth = st.integers(min_value=1, max_value=400)
    return st.one_of(
        st.tuples(depth, inner).map(lambda p: "(" * p[0] + p[1] + ")" * p[0]),
        st.tuples(depth, inner).map(lambda p: "-" * p[0] + p[1]),
        st.tuples(depth, inner).map(lambda p: "2**" * p[0] + p[1]),
    )


HOSTILE = st.one_of(
    st.recursive(ATOMS, _combine, max_leaves=8),
    _deep(st.recursive(ATOMS, _combine, max_leaves=3)),
    st.sampled_from(["9**9**9", "10**100000", "(10**1000)**1000", "2**2**2**2**2**2", "9" * 5000,
                     "1" + "0" * 299, "(" * 5000, "-" * 5000 + "1", "1e1000000000000", "10**-100000",
                     "().__class__", "__import__('os').system('true')", "open('/etc/passwd').read()",
                     "exec('1')", "eval('1')", "compile('1','','eval')", "[].__class__.__base__"]),
    st.text(alphabet=st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=400),
    st.text(alphabet="0123456789 .,+-*/%()^xX×÷−eE_=", max_size=400),
    st.text(max_size=200),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE)
def test_hostile_expressions_are_refused_or_answered_without_running_code(audit, expression):
    start = time.perf_counter()
    try:
        result = audit.run(evaluate, expression)
    except CalculatorError as exc:
        assert str(exc).strip()
    else:
        assert RESULT.fullmatch(result), result
    assert time.perf_counter() - start < MAX_SECONDS
    assert audit.unexpected() == []
    assert len(audit.events) <= 1  # at most the one ast.parse


# --- differential: valid arithmetic equals Python's exact Fraction arithmetic --------------------------------------

NUMBERS = st.one_of(st.integers(0, 10_000).map(str),
                    st.decimals(0, 1000, places=3, allow_nan=False, allow_infinity=False).map(str))
EXPONENTS = st.sampled_from(["0", "1", "2", "3", "-1", "-2", "(-3)"])


def _arithmetic(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(inner, st.sampled_from([" + ", " - ", " * ", " / ", " // ", " % ", "+", "*-"]), inner).map("".join),
        st.tuples(st.sampled_from(["-", "+", "- "]), inner).map("".join),
        inner.map(lambda e: f"({e})"),
        st.tuples(inner, EXPONENTS).map(lambda p: f"({p[0]}) ** {p[1]}"),
    )


ARITHMETIC = st.recursive(NUMBERS, _arithmetic, max_leaves=10)


def reference(expression: str) -> Fraction | None:
    """Python's own parser and precedence, every literal an exact Fraction; None for a division by zero."""
    exact = re.sub(r"\d+(?:\.\d+)?(?:E[+-]?\d+)?", lambda m: f"Fraction('{m[0]}')", expression)
    try:
        return Fraction(eval(exact, {"Fraction": Fraction}))  # the test's trusted input, built from the grammar
    except ZeroDivisionError:
        return None


@settings(max_examples=500, deadline=None)
@given(ARITHMETIC)
def test_arithmetic_matches_exact_fractions(expression):
    expected = reference(expression)
    if expected is None:
        with pytest.raises(CalculatorError, match="division by zero"):
            evaluate(expression)
        return
    try:
        result = evaluate(expression)
    except CalculatorError as exc:  # only the size bounds may refuse valid arithmetic
        assert "digits" in str(exc)
        return
    if expected.denominator == 1:
        assert result == str(expected.numerator)
    elif "e" not in result and len(result.partition(".")[2]) <= 20 and Fraction(result) == expected:
        pass  # an exact terminating decimal
    else:  # rounded to 12 significant digits
        assert abs(Fraction(result) - expected) <= abs(expected) * Fraction(1, 10**11)
        assert len(result.lstrip("-0.").replace(".", "").partition("e")[0]) <= 12
