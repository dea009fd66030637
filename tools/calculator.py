"""A safe, exact calculator: ``ast.parse`` plus a walk over a whitelist of nodes, never ``eval``.

Only numbers, unary ``+ -``, binary ``+ - * / // % **`` and parentheses are accepted. Arithmetic is exact
(:class:`fractions.Fraction`), so ``0.1 + 0.2`` is ``0.3``. Everything is bounded (length, nodes, depth,
exponents, digits) so no input can hang or exhaust memory, and every refusal is a :class:`CalculatorError`
whose message tells the model what to change.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Annotated

from pydantic import Field

from strop.tools.base import ToolError, tool

MAX_LENGTH = 300  # characters of the expression
MAX_NODES = 200  # numbers and operators in the syntax tree
MAX_DEPTH = 50  # nesting of operators
MAX_EXPONENT = 1000  # |n| in x ** n
MAX_DIGITS = 1000  # of any numerator or denominator, intermediate results included
MAX_FRACTION_DIGITS = 20  # a terminating decimal longer than this is rounded instead
SIGNIFICANT_DIGITS = 12  # of a rounded result

RUN_DIGITS = 32  # digits in a row an expression may hold (a small model's runaway number fills its token budget)

# What structured output may emit for the calculator's argument: digits, operators and accepted spellings, with
# runs of digits bounded. xgrammar ignores maxLength beside a pattern, and a bounded repeat of the groups would
# grow the grammar, so the length is checked when the tool runs (and the action's token budget caps it).
_SYMBOLS = " .,+*/%()^xX×÷−eE_-"
EXPRESSION_PATTERN = rf"^[{_SYMBOLS}]*([0-9]{{1,{RUN_DIGITS}}}[{_SYMBOLS}]+)*[0-9]{{0,{RUN_DIGITS}}}$"

_MAX_BITS = math.ceil(MAX_DIGITS * math.log2(10))
_SPELLINGS = str.maketrans({"×": "*", "÷": "/", "−": "-", "^": "**"})
_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,])")
_TIMES = re.compile(r"(?<=[\d.)])\s*[xX]\s*(?=[\d.(])")
_NON_DECIMAL = re.compile(r"(?<![\w.])0[xXbBoO][0-9a-fA-F_]+")
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_ALLOWED = "use only numbers, + - * / // % ** and parentheses"
_REFUSED = [  # (node types, what the model is told), first match wins
    (ast.Name, "names are not allowed"),
    (ast.Call, "function calls are not allowed"),
    (ast.Attribute, "attribute access is not allowed"),
    (ast.Subscript, "indexing is not allowed"),
    ((ast.Constant, ast.JoinedStr, ast.FormattedValue), "strings and other non-numbers are not allowed"),
    (ast.Tuple, "commas are allowed only as thousands separators (like 1,234)"),
    ((ast.List, ast.Set, ast.Dict), "lists, sets and dicts are not allowed"),
    ((ast.Compare, ast.BoolOp), "comparisons and logic are not allowed"),
    (ast.NamedExpr, "assignments are not allowed"),
    (ast.Lambda, "lambdas are not allowed"),
]
_SYMBOLS = {ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>", ast.MatMult: "@",
            ast.Invert: "~", ast.Not: "not"}


class CalculatorError(ToolError):
    """An expression the calculator refuses; the message names the offending part."""


def evaluate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and render the result.

    Accepted besides Python's arithmetic: ``×`` and ``x``/``X`` between two numbers or parentheses (``3 x 4``)
    for ``*``; ``÷`` for ``/``; ``−`` (U+2212) for ``-``; ``^`` for ``**`` (so ``2^3^2`` is 512 and ``-2^2`` is -4);
    thousands separators in groups of exactly three (``1,234,567.5``); a trailing ``=``. ``%`` is the
    remainder, not a percentage. Exponents must be whole numbers. Hexadecimal, octal and binary are refused.

    Rendering, chosen to be exact where possible and always parseable by ``float()``:
    a whole result is an integer (every digit, e.g. ``7006652``); a terminating decimal with at most
    20 decimal places is written exactly (``0.3``, ``3.5``, ``-0.125``); anything else (``1/3``) is rounded
    to 12 significant digits: ``0.333333333333``, or ``3.33333333333e+19`` outside 1e-6 .. 1e11.

    Raises:
        CalculatorError: for anything that is not bounded arithmetic, with a message naming the problem.
    """
    text = _normalize(expression)
    tree = _parse(text)
    _check_tree(tree, text)
    return _render(_eval(tree.body, text, 0))


@tool
def calculator(expression: Annotated[str, Field(pattern=EXPRESSION_PATTERN)]) -> str:
    """Evaluate an arithmetic expression exactly, e.g. (914 - 186) * 3 or 7 / 2.

    Args:
        expression: numbers with + - * / // % ** (or ^) and parentheses; no names or words.
    """
    return evaluate(expression)


def computes_nothing(expression: str) -> bool:
    """A valid expression with no operator between numbers (``46.0``, ``-3``): the call only restates a number."""
    try:
        text = _normalize(expression)
        tree = _parse(text)
        _check_tree(tree, text)  # the text parsed: its offsets name the refused part
    except CalculatorError:
        return False
    return not any(isinstance(node, ast.BinOp) for node in ast.walk(tree.body))


def _normalize(expression: str) -> str:
    """Trim, bound the length and rewrite the accepted spellings into Python arithmetic."""
    if not isinstance(expression, str):
        raise CalculatorError(f"the expression must be a string, not {type(expression).__name__}")
    text = expression.strip().removesuffix("=").strip()
    if not text:
        raise CalculatorError("expression is empty")
    if len(text) > MAX_LENGTH:
        raise CalculatorError(f"expression is too long ({len(text)} characters, max {MAX_LENGTH})")
    if literal := _NON_DECIMAL.search(text):
        raise CalculatorError(f"only decimal numbers are allowed, not {literal[0]!r}")
    text = _THOUSANDS.sub(lambda m: m[0].replace(",", ""), text.translate(_SPELLINGS))
    return " ".join(_TIMES.sub(" * ", text).split())  # newlines and tabs would end the expression early


def _parse(text: str) -> ast.Expression:
    try:
        return ast.parse(text, filename="<calculator>", mode="eval")
    except SyntaxError as exc:
        where = {None: "in", 0: "at the end of"}.get(exc.offset, f"at column {exc.offset} of")
        raise CalculatorError(f"syntax error {where} {text!r}: {exc.msg}") from None
    except (ValueError, MemoryError, RecursionError) as exc:  # e.g. a null byte, or nesting the parser refuses
        raise CalculatorError(f"cannot parse {text!r}: {exc}") from None


def _check_tree(tree: ast.Expression, text: str) -> None:
    """Refuse, before computing anything, trees that are too big or hold anything but arithmetic."""
    nodes = [node for node in ast.walk(tree.body) if isinstance(node, ast.expr)]
    if len(nodes) > MAX_NODES:
        raise CalculatorError(f"expression has too many parts ({len(nodes)}, max {MAX_NODES})")
    for node in nodes:
        match node:
            case ast.Constant(value=int() | float()) if not isinstance(node.value, bool):
                pass
            case ast.UnaryOp(op=ast.UAdd() | ast.USub()):
                pass
            case ast.BinOp(op=op) if type(op) in _OPERATORS or isinstance(op, ast.Pow):
                pass
            case _:
                raise CalculatorError(_refusal(node, text))


def _refusal(node: ast.AST, text: str) -> str:
    snippet = ast.get_source_segment(text, node) or text
    shown = repr(snippet if len(snippet) <= 40 else snippet[:37] + "...")
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        return f"operator {_SYMBOLS.get(type(node.op), type(node.op).__name__)!r} is not allowed; {_ALLOWED}"
    for types, message in _REFUSED:
        if isinstance(node, types):
            return f"{message}: {shown}; {_ALLOWED}"
    return f"{type(node).__name__} is not allowed: {shown}; {_ALLOWED}"


def _eval(node: ast.expr, text: str, depth: int) -> Fraction:
    if depth > MAX_DEPTH:
        raise CalculatorError(f"expression is nested too deeply (max {MAX_DEPTH} levels)")
    match node:
        case ast.Constant():
            return _number(node, text)
        case ast.UnaryOp(op=op, operand=operand):
            value = _eval(operand, text, depth + 1)
            return -value if isinstance(op, ast.USub) else value
        case ast.BinOp(left=left, op=op, right=right):
            a, b = _eval(left, text, depth + 1), _eval(right, text, depth + 1)
            try:
                result = _power(a, b) if isinstance(op, ast.Pow) else _OPERATORS[type(op)](a, b)
            except ZeroDivisionError:
                raise CalculatorError("division by zero") from None
            return _bounded(Fraction(result))
    raise CalculatorError(_refusal(node, text))  # unreachable after _check_tree; kept as the last line of defence


def _number(node: ast.Constant, text: str) -> Fraction:
    """The literal's exact value, read from its source text (``0.1`` is 1/10, ``1e400`` is not infinity)."""
    literal = (ast.get_source_segment(text, node) or str(node.value)).replace("_", "")
    try:
        value = Decimal(literal)
    except ArithmeticError:  # decimal.InvalidOperation; the tokenizer accepted a non-decimal literal
        raise CalculatorError(f"only decimal numbers are allowed, not {_short(literal)!r}") from None
    if abs(value.as_tuple().exponent) > 2 * MAX_DIGITS:  # before Fraction() expands 1e999999999
        raise CalculatorError(f"number {_short(literal)} is out of range (max {MAX_DIGITS} digits)")
    return _bounded(Fraction(value))


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    """``base ** exponent`` for whole exponents, refused before computing when the result would be too big."""
    if exponent.denominator != 1:
        shown = _short(_render(exponent))
        raise CalculatorError(f"exponent {shown} is not a whole number; only whole exponents are allowed")
    n = exponent.numerator
    if abs(n) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {_short(str(n))} is too large (max {MAX_EXPONENT})")
    size = max(abs(base.numerator), base.denominator)
    digits = abs(n) * math.log10(size) if size > 1 else 0
    if digits > MAX_DIGITS + 1:
        raise CalculatorError(f"the power would have about {digits:.0f} digits (max {MAX_DIGITS})")
    return base**n


def _bounded(value: Fraction) -> Fraction:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > _MAX_BITS:
        raise CalculatorError(f"a result has more than {MAX_DIGITS} digits")
    return value


def _render(value: Fraction) -> str:
    """An integer, an exact short decimal, or 12 significant digits (see :func:`evaluate`)."""
    if value.denominator == 1:
        return str(value.numerator)
    exact = _terminating(value)
    if exact is not None:
        return exact
    with localcontext(prec=SIGNIFICANT_DIGITS):
        rounded = (Decimal(value.numerator) / Decimal(value.denominator)).normalize()
    # Plain notation only where it keeps a decimal place: 1e15/3 is 3.33333333333e+14, not 333333333333000.
    plain = -6 <= rounded.adjusted() < SIGNIFICANT_DIGITS - 1
    return format(rounded, "f" if plain else "e")


def _terminating(value: Fraction) -> str | None:
    """The exact decimal of a fraction whose denominator is 2**a * 5**b, when it is short enough."""
    den = value.denominator
    twos = (den & -den).bit_length() - 1
    rest, fives = den >> twos, 0
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    places = max(twos, fives)
    if rest != 1 or places > MAX_FRACTION_DIGITS:
        return None
    scaled = abs(value.numerator) * 10**places // den
    digits = str(scaled).rjust(places + 1, "0")
    return f"{'-' if value < 0 else ''}{digits[:-places]}.{digits[-places:]}"


def _short(number: str) -> str:
    return number if len(number) <= 24 else f"{number[:12]}... ({len(number)} characters)"
