"""Demonstrations from worked solutions: what a round learns where the model solves no problem of a task.

The base model solves no word problem, so no critic has a right answer to prefer. A suite whose task has a generator
(``scenarios.generators``) gives worked problems of every template instead; each worked solution becomes the agent's
two actions, in the context strop shows the model (``ModelInput``): one calculator call holding all of the solution's
steps (``worked_expression``), then ``final_answer`` with its result. Each is a pair whose rejected side stands in
for a miss (answering 0 at once; calling again instead of answering): the round's DPO + RPO learns the chosen
action, SFT reads only it. About 14 worked problems a template taught the 135M model 60% of new problems of those
templates and nothing beyond them (docs/measurements.md): it learns a template's computation, not word problems.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from strop.agents.graph import ModelInput
from strop.scenarios.generators import WorkedProblem
from strop.tools.calculator import CalculatorError, evaluate
from strop.training.pairs import action, text_pair

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_PER_UNIT = re.compile(r"/\s*[A-Za-z]+")  # "56 orders/day": a unit, not a division
_TIMES = re.compile(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])")  # "12 x 2", "25 girls x 4" once its words are dropped
# Numbers joined by operators up to the end of the text before an "=": "56 56 * 3" ends in "56 * 3".
_EXPRESSION_END = re.compile(r"[(\s]*\d[\d.]*(?:[\s)]*[-+*/][\s(]*\d[\d.]*)+[\s)]*$")
_PERCENT = re.compile(rf"({_NUMBER.pattern})\s*%")
# Numbers a question gives in words, and those its units imply ("a week" gives 7): a worked solution uses them.
_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
          "ten": 10, "eleven": 11, "twelve": 12, "twice": 2, "double": 2, "triple": 3, "thrice": 3,
          "half": (0.5, 2), "quarter": (0.25, 4), "third": 3, "dozen": 12}
_UNITS = {"week": (7, 52), "day": (7, 24), "hour": (24, 60), "minute": 60, "month": 12, "year": (12, 52, 365),
          "yard": 3, "feet": 12, "foot": 12, "inch": 12, "cent": 100}
_ALWAYS = (1, 2, 100)
_AS_PERCENT = re.compile(r"[*x×]\s*100\s*%")  # "multiply by 100% to express it as a percentage": times 100
_WORD = "|".join(_WORDS)
_OPERAND_WORD = re.compile(rf"(?i)\b(?:{_WORD})\b(?=\s*[-+*/×])|(?<=[-+*/×] )(?:{_WORD})\b")  # "half * 150"


def demonstration_pairs(problems: Iterable[WorkedProblem], shown: ModelInput, skip: set[str] | None = None,
                        ) -> tuple[list[dict[str, Any]], int]:
    """The two demonstrated actions of each problem whose solution reads as one expression, as pairs; and how many
    problems were left out (no such expression, or a question in ``skip`` or met before, compared as given)."""
    pairs, left_out, seen = [], 0, set(skip or ())
    for problem in problems:
        expression = worked_expression(problem.solution, float(problem.answer), problem.question)
        if expression is None or problem.question in seen:
            left_out += 1
            continue
        seen.add(problem.question)
        asked = {"role": "user", "content": problem.question}
        call = action("calculator", {"expression": expression})
        answered = [asked, {"role": "assistant", "content": call},
                    {"role": "tool", "content": str(evaluate(expression))}]
        about = {"source": "demonstration", "critic": "worked-solution", "template": problem.template}
        answer, miss = (action("final_answer", {"answer": a, "sources": []}) for a in (problem.answer, "0"))
        pairs += [text_pair(shown.context([asked]), call, miss, about),
                  text_pair(shown.context(answered), answer, call, about)]
    return pairs, left_out


def worked_expression(solution: str, answer: float, question: str) -> str | None:
    """A worked solution's steps (``<expression> = <value>`` among words and units) as one expression over the
    question's numbers, each earlier step's value replaced by its expression: "12 x 2 = 24 [...] 12 + 24 + 34 = 70"
    gives ``12 + (12*2) + (17 + 17)``. A step rounded down is kept as ``(...) // 1``; one the calculator does not
    confirm is left out with every step built on it. None where the result misses ``answer``, uses a number the
    question lacks, or is ambiguous (it changes when a step whose value is also one of the question's numbers is
    read as that number)."""
    given = _given(question)
    expression = _chain(solution, given, substitute_given=True)
    if expression is None or expression != _chain(solution, given, substitute_given=False):
        return None
    if _value(expression) != float(answer) or not {float(n) for n in _NUMBER.findall(expression)} <= given:
        return None
    return expression


def _given(question: str) -> set[float]:
    """The values a solution may take from ``question``: its numbers (a percentage also as a fraction), the numbers it
    writes in words, those its units imply, and 1, 2 and 100."""
    text = question.replace(",", "")
    given = {float(n) for n in _NUMBER.findall(text)} | {float(p) / 100 for p in _PERCENT.findall(text)}
    words = set(re.findall(r"[a-z]+", text.lower()))
    for table in (_WORDS, _UNITS):
        for word, values in table.items():
            if word in words or word + "s" in words:
                given.update(values if isinstance(values, tuple) else (values,))
    return given | set(_ALWAYS)


def _chain(solution: str, given: set[float], substitute_given: bool) -> str | None:
    """The last confirmed step of ``solution`` with the earlier steps' expressions in place of their values."""
    steps: dict[str, str] = {}  # a step's value as written -> its expression
    doubtful: set[str] = set()  # values of steps left out
    last = None
    for line in solution.split("\n"):
        sides = line.split("=")
        for left, right in zip(sides, sides[1:], strict=False):
            expression, value = _step(left, right)
            if expression is None:
                continue
            if any(n in doubtful and n not in steps and float(n) not in given for n in _NUMBER.findall(expression)):
                doubtful.add(value)  # it builds on a step left out
                continue
            expression = _NUMBER.sub(lambda n: f"({steps[n[0]]})" if n[0] in steps and (
                substitute_given or float(n[0]) not in given) else n[0], expression)
            exact = _value(expression)
            if exact is not None and exact != float(value) and math.floor(exact) == float(value):
                expression = f"({expression}) // 1"  # the solution rounded down: "11 * 0.5 = 5" tubes
            elif exact != float(value):
                doubtful.add(value)  # misread
                continue
            steps.setdefault(value, expression)
            last = expression
    return last


def _step(left: str, right: str) -> tuple[str | None, str]:
    """The expression ending the text before an ``=`` (from its last colon on) and the number after it."""
    value = _NUMBER.search(_arithmetic(right).strip()[:12])
    found = _EXPRESSION_END.search(_arithmetic(left).rsplit(":", 1)[-1])
    if not value or not found:
        return None, ""
    expression = found[0].strip()
    while expression.startswith("(") and expression.count("(") > expression.count(")"):
        expression = expression[1:]
    return re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", re.sub(r"\s+", " ", expression))), value[0]


def _arithmetic(text: str) -> str:
    """A line of a worked solution with its words, units and currency dropped ("72 plants × £7" is ``72 * 7``,
    "30%" is ``(30/100)``, "half * 150" is ``0.5 * 150``, "350 / 1400 * 100%" a percentage: ``350 / 1400 * 100``)."""
    text = _PER_UNIT.sub(" ", re.sub(r"[€$£¥₹]", "", _AS_PERCENT.sub("* 100", text.replace(",", ""))))
    text = _OPERAND_WORD.sub(lambda w: str(_first(_WORDS[w[0].lower()])), text)
    text = re.sub(r"[A-Za-z'’]+", lambda w: w[0] if w[0] in ("x", "X") else " ", _PERCENT.sub(r"(\1/100)", text))
    return re.sub(r"(?<=\d)\s*\(", "*(", re.sub(r"[xX%]", " ", _TIMES.sub("*", text.replace("×", "x"))))


def _first(values: float | tuple[float, ...]) -> float:
    return values[0] if isinstance(values, tuple) else values


def _value(expression: str) -> float | None:
    try:
        return float(evaluate(expression))
    except (CalculatorError, ValueError):
        return None
