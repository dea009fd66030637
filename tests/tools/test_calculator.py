"""The calculator: exact arithmetic, rendering, accepted spellings, bounds and refusals."""

from __future__ import annotations

import contextlib
import json
import time

import pytest

from strop.tools import CalculatorError, ToolError, calculator, evaluate
from strop.tools.calculator import MAX_DEPTH, MAX_EXPONENT, MAX_LENGTH, RUN_DIGITS, computes_nothing


@pytest.mark.parametrize(("expression", "expected"), [
    ("1234 * 5678", "7006652"),
    ("0.1 + 0.2", "0.3"),
    ("7 / 2", "3.5"),
    ("914 - 186", "728"),
    ("2 + 3 * 4", "14"),
    ("(2 + 3) * 4", "20"),
    ("10 - 4 - 3", "3"),
    ("100 / 10 / 5", "2"),
    ("-3 + 5", "2"),
    ("-(2 + 3)", "-5"),
    ("--4", "4"),
    ("+7", "7"),
    ("2 ** 10", "1024"),
    ("2 ** 3 ** 2", "512"),
    ("-2 ** 2", "-4"),
    ("(-2) ** 2", "4"),
    ("2 ** -2", "0.25"),
    ("(1/2) ** 3", "0.125"),
    ("7 // 2", "3"),
    ("-7 // 2", "-4"),
    ("7 % 3", "1"),
    ("-7 % 3", "2"),
    ("2.5 % 1", "0.5"),
    ("0.1 * 3", "0.3"),
    ("1 - 0.9", "0.1"),
    ("1.5e3", "1500"),
    ("2.5E-3 * 4", "0.01"),
    ("1_000 + 1", "1001"),
    ("(((1 + 2)))", "3"),
    ("0 ** 0", "1"),
    ("123456789012345678901234567890 * 10", "1234567890123456789012345678900"),
    ("2 ** 100", "1267650600228229401496703205376"),
    ("1e400 / 1e399", "10"),
])
def test_exact_results(expression, expected):
    assert evaluate(expression) == expected


@pytest.mark.parametrize(("expression", "expected"), [
    ("1 / 3", "0.333333333333"),
    ("2 / 3", "0.666666666667"),
    ("-1 / 3", "-0.333333333333"),
    ("1 / 3 + 2", "2.33333333333"),
    ("10 ** 10 / 3", "3333333333.33"),
    ("10 ** 15 / 3", "3.33333333333e+14"),
    ("1 / 3 * 10 ** -7", "3.33333333333e-8"),
    ("1 / 7", "0.142857142857"),
    ("2 ** -30", "9.31322574615e-10"),  # terminating, but more than 20 decimal places
])
def test_non_terminating_results_are_rounded_to_12_significant_digits(expression, expected):
    assert evaluate(expression) == expected


@pytest.mark.parametrize(("expression", "expected"), [
    ("1/1024", "0.0009765625"),
    ("1/20", "0.05"),
    ("-5/8", "-0.625"),
    ("123456789012345678/10", "12345678901234567.8"),
])
def test_terminating_decimals_are_exact(expression, expected):
    assert evaluate(expression) == expected


@pytest.mark.parametrize(("expression", "expected"), [
    ("3 × 4", "12"),
    ("3 x 4", "12"),
    ("3X4", "12"),
    ("3 x (1 + 1)", "6"),
    ("(1 + 1) x 3", "6"),
    ("12 ÷ 4", "3"),
    ("5 − 7", "-2"),
    ("2^10", "1024"),
    ("2^3^2", "512"),
    ("1,234 + 1", "1235"),
    ("1,234,567.5 * 2", "2469135"),
    ("2 + 2 =", "4"),
    ("  6 *\n 7\t", "42"),
])
def test_accepted_spellings(expression, expected):
    assert evaluate(expression) == expected


@pytest.mark.parametrize(("expression", "message"), [
    ("", "expression is empty"),
    ("   \n", "expression is empty"),
    ("=", "expression is empty"),
    ("os", "names are not allowed: 'os'"),
    ("2 * x", "names are not allowed: 'x'"),
    ("__import__('os')", "function calls are not allowed: \"__import__('os')\""),
    ("sqrt(2)", "function calls are not allowed"),
    ("().__class__", "attribute access is not allowed: '().__class__'"),
    ("(1)[0]", "indexing is not allowed"),
    ("'a' * 3", "strings and other non-numbers are not allowed: \"'a'\""),
    ("f'{1}'", "strings and other non-numbers are not allowed"),
    ("True + 1", "strings and other non-numbers are not allowed: 'True'"),
    ("3j", "strings and other non-numbers are not allowed: '3j'"),
    ("1,23", "commas are allowed only as thousands separators (like 1,234): '1,23'"),
    ("1, 234", "commas are allowed only as thousands separators"),
    ("[1, 2]", "lists, sets and dicts are not allowed"),
    ("1 < 2", "comparisons and logic are not allowed"),
    ("1 and 2", "comparisons and logic are not allowed"),
    ("(y := 2)", "assignments are not allowed: 'y := 2'"),
    ("lambda: 1", "lambdas are not allowed"),
    ("[i for i in (1,)]", "ListComp is not allowed"),
    ("1 if 1 else 2", "IfExp is not allowed"),
    ("6 & 3", "operator '&' is not allowed"),
    ("1 << 2", "operator '<<' is not allowed"),
    ("~1", "operator '~' is not allowed"),
    ("not 1", "operator 'not' is not allowed"),
    ("1 / 0", "division by zero"),
    ("1 // (2 - 2)", "division by zero"),
    ("5 % 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("2 ** 0.5", "exponent 0.5 is not a whole number"),
    ("10 ** 100000", f"exponent 100000 is too large (max {MAX_EXPONENT})"),
    ("9 ** 9 ** 9", "exponent 387420489 is too large"),
    ("12345 ** 999", "the power would have about 4087 digits (max 1000)"),
    ("10 ** 1000 * 10", "a result has more than 1000 digits"),
    ("(10 ** 999 + 1 / 3) ** 2", "the power would have about 1999 digits"),
    ("10 ** 600 * 10 ** 600", "a result has more than 1000 digits"),
    ("1e999999999", "number 1e999999999 is out of range"),
    ("1e-999999999", "number 1e-999999999 is out of range"),
    ("0x10", "only decimal numbers are allowed, not '0x10'"),
    ("0b101", "only decimal numbers are allowed, not '0b101'"),
    ("0o17", "only decimal numbers are allowed, not '0o17'"),
    ("1 +", "syntax error at the end of '1 +'"),
    ("(1", "syntax error at column 1 of '(1': '(' was never closed"),
    ("2 ** * 3", "syntax error at column 6 of '2 ** * 3'"),
    ("١٢٣", "invalid character '١' (U+0661)"),
    ("1\x002", "syntax error in '1\\x002'"),
    ("1" * (MAX_LENGTH + 1), f"expression is too long ({MAX_LENGTH + 1} characters, max {MAX_LENGTH})"),
    ("-" * (MAX_DEPTH + 1) + "1", f"expression is nested too deeply (max {MAX_DEPTH} levels)"),
    ("+".join(["1"] * 120), "expression has too many parts (239, max 200)"),
])
def test_refusals_name_the_problem(expression, message):
    with pytest.raises(CalculatorError) as info:
        evaluate(expression)
    assert message in str(info.value)


def test_refusals_tell_the_model_what_is_allowed():
    with pytest.raises(CalculatorError, match=r"use only numbers, \+ - \* / // % \*\* and parentheses"):
        evaluate("os.system")


def test_calculator_error_is_a_tool_error():
    assert issubclass(CalculatorError, ToolError)


def test_non_string_is_refused():
    with pytest.raises(CalculatorError, match="must be a string, not int"):
        evaluate(12)  # type: ignore[arg-type]


def test_nesting_at_the_bound_is_accepted():
    assert evaluate("-" * MAX_DEPTH + "1") == "1"
    assert evaluate("(" * 99 + "7" + ")" * 99) == "7"  # parentheses add no depth


@pytest.mark.parametrize("expression", ["9 ** 9 ** 9", "10 ** 1000 * 10 ** 1000", "(10 ** 999 + 1 / 7) ** 1000",
                                        "9" * 300, "1 / 3 * " * 37 + "1", "(2 ** 1000 + 1 / 3) * (3 ** 600 + 1 / 7)"])
def test_worst_cases_finish_fast(expression):
    start = time.perf_counter()
    with contextlib.suppress(CalculatorError):
        evaluate(expression)
    assert time.perf_counter() - start < 0.1


def test_calculator_tool_runs_and_reports_errors_as_tool_errors():
    assert calculator.run({"expression": "1234 * 5678"}) == "7006652"
    with pytest.raises(CalculatorError, match="division by zero"):
        calculator.run({"expression": "1 / 0"})
    with pytest.raises(ToolError, match="argument 'expression' = 'import os': String should match pattern"):
        calculator.run({"expression": "import os"})


def test_calculator_schema_constrains_the_expression_to_arithmetic_characters():
    prop = calculator.args_schema()["properties"]["expression"]
    assert prop["type"] == "string"
    assert prop["pattern"].startswith("^[") and prop["pattern"].endswith(f"[0-9]{{0,{RUN_DIGITS}}}$")
    assert "maxLength" not in prop  # xgrammar ignores maxLength next to a pattern; the tool checks the length
    assert prop["description"]


@pytest.mark.parametrize(("expression", "allowed"), [
    ("(914 - 186) * 3", True), ("1,234 + 5", True), ("3 × 4", True), ("1.5e3 + 2", True), ("7" * RUN_DIGITS, True),
    ("7" * (RUN_DIGITS + 1), False), ("25 * 1" + "0" * RUN_DIGITS, False), ("import os", False)])
def test_the_grammar_bounds_runs_of_digits_in_an_expression(expression, allowed, grammar_accepts):
    action = json.dumps({"tool": "calculator", "args": {"expression": expression}}, ensure_ascii=False)
    assert grammar_accepts([calculator], action) is allowed


@pytest.mark.parametrize(("expression", "nothing"), [("46.0", True), ("-3", True), (" (7) ", True), ("1,234", True),
                                                     ("46 / 1", False), ("2^3", False), ("x", False), ("", False),
                                                     # refused where the rewritten spellings shifted the offsets
                                                     ("6*13+1*14+2*1 (160.1)×1,000 (16,010.8)", False)])
def test_computes_nothing_means_a_valid_expression_without_an_operator(expression, nothing):
    assert computes_nothing(expression) is nothing
