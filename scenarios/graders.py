"""Graders: how a case's ``expect`` block judges an episode. Several may combine; all must pass.

    expect:
      numeric: 7006652                       # the answer's last number, within a tolerance
      exact: Paris                           # the whole answer (case and a final period ignored)
      contains: [Paris, France]              # every text appears in the answer
      any_of: [NewcastleGateshead, Gateshead]  # at least one appears
      regex: '^\\d+$'
      json: {"city": "Paris"}                # the answer is JSON holding these values
      tool_call: {name: math.hypot, args: {x: [4], y: [5]}}   # a call with allowed values (BFCL style)
      judge: "Polite, and names the capital."  # an LLM scores the answer against the rubric

Each grader's spec is checked when the suite loads, so a typo is reported with its file and line
before anything runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from strop.tools.declared import tool_name


@dataclass(frozen=True)
class Outcome:
    """What an episode produced, as graders see it."""

    question: str
    answer: str | None  # the final_answer's text (citations apart); None when the agent gave none
    sources: list[str] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # every tool call, in order


@dataclass(frozen=True)
class Grade:
    grader: str
    passed: bool
    score: float  # 0..1
    detail: str = ""


class Judge(Protocol):
    async def rubric(self, question: str, answer: str, rubric: str) -> tuple[float | None, str]: ...


class GraderSpecError(ValueError):
    """A grader's spec is wrong; ``field`` names it inside ``expect``."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shorthand: ClassVar[str] = "value"  # the field a bare (non-mapping) spec fills

    async def grade(self, outcome: Outcome, judge: Judge | None) -> Grade:
        raise NotImplementedError


class Exact(Spec):
    value: str | int | float
    ignore_case: bool = True

    async def grade(self, outcome: Outcome, judge: Judge | None) -> Grade:
        norm = (lambda s: _plain(s).casefold()) if self.ignore_case else _plain
        ok = outcome.answer is not None and norm(outcome.answer) == norm(str(self.value))
        return _grade("exact", ok, f"expected {self.value!r}")


class Numeric(Spec):
    value: float
    tolerance: float = Field(1e-6, ge=0)
    relative: bool = False

    @field_validator("value", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        return _to_number(value) if isinstance(value, str) else value

    async def grade(self, outcome: Outcome, judge: Judge | None) -> Grade:
        numbers = NUMBER.findall(outcome.answer or "")
        got = _to_number(numbers[-1]) if numbers else None
        limit = self.tolerance * abs(self.value) if self.relative else self.tolerance
        ok = got is not None and abs(got - self.value) <= limit
        return _grade("numeric", ok, f"expected {self.value:g}, got {'no number' if got is None else f'{got:g}'}")


class Contains(Spec):
    value: list[str] = Field(min_length=1)
    ignore_case: bool = True

    @field_validator("value", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | int | float) else value

    def found(self, answer: str | None) -> list[bool]:
        fold = str.casefold if self.ignore_case else str
        return [fold(str(v)) in fold(answer or "") for v in self.value]

    def holds(self, text: str | None) -> bool:
        """``text`` holds what this grader wants in an answer."""
        return all(self.found(text))

    async def grade(self, outcome: Outcome, judge: Judge | None) -> Grade:
        missing = [v for v, hit in zip(self.value, self.found(outcome.answer), strict=True) if not hit]
        return _grade("contains", not missing, f"missing {missing}")


class AnyOf(Contains):
    def holds(self, text: str | None) -> bool:
        return any(self.found(text))

    async def grade(self, outcome: Outcome, judge: Judge | None) -> Grade:
        return _grade("any_of", self.holds(outcome.answer), f"none of {self.value}")


class Regex(Spec):
    shorthand: ClassVar[str] = "pattern"
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern

    async def grade(self, outcome: Outcome, judge: Judge | None) -> Grade:
        ok = outcome.answer is not None and re.search(self.pattern, outcome.answer) is not None
        return _grade("regex", ok, f"no match for /{self.pattern}/")


class JsonMatch(Spec):
    value: Any

    async def grade(self, outcome: Outcome, judge: Judge | None) -> Grade:
        try:
            got = json.loads(outcome.answer or "")
        except json.JSONDecodeError:
            return _grade("json", False, "the answer is not JSON")
        return _grade("json", _subset(self.value, got), f"expected {json.dumps(self.value)[:120]}")


class ToolCall(Spec):
    """A call of ``name`` whose arguments take allowed values: ``{arg: [allowed, ...]}``.

    As in BFCL, ``""`` among the allowed values means the argument may be left out; a value that is
    not a list is the one allowed value. Strings compare case- and punctuation-insensitively.
    """

    name: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_bfcl(cls, truth: Any) -> ToolCall:
        """BFCL's ground truth ``[{"fn": {"arg": [allowed]}}]`` (one call)."""
        if isinstance(truth, list) and len(truth) == 1:
            truth = truth[0]
        if not (isinstance(truth, dict) and len(truth) == 1 and isinstance(next(iter(truth.values())), dict)):
            raise ValueError('expected {name: ..., args: {...}} or BFCL\'s [{"function": {"arg": [values]}}]')
        (name, args), = truth.items()
        return cls(name=name, args=args)

    async def grade(self, outcome: Outcome, judge: Judge | None) -> Grade:
        """Passes when every call of the function is right: one right call beside a different one is not the
        expected behaviour (trying several values until one fits). The score gives partial credit (the call,
        then each argument), averaged over the calls of the function."""
        wanted = tool_name(self.name)
        calls = [args for name, args in outcome.calls if name == wanted]
        if not calls:
            made = sorted({name for name, _ in outcome.calls}) or "none"
            return _grade("tool_call", False, f"no call of {wanted} (calls made: {made})")
        mismatches = [self._mismatches(args) for args in calls]
        if not any(mismatches):
            return _grade("tool_call", True, "")
        parts = 1 + len(self.args) + 1  # the call itself, each argument, no unexpected arguments
        score = sum((parts - len(m)) / parts for m in mismatches) / len(calls)
        wrong = [f"call {i + 1} of {len(calls)}: " + "; ".join(m) for i, m in enumerate(mismatches) if m]
        return Grade("tool_call", False, round(score, 3), " | ".join(wrong))

    def _mismatches(self, args: dict[str, Any]) -> list[str]:
        given = {k: v for k, v in args.items() if v is not None}
        problems = []
        for arg, allowed in self.args.items():
            allowed = allowed if isinstance(allowed, list) else [allowed]
            if arg not in given:
                if "" not in allowed:
                    problems.append(f"missing argument {arg}")
            elif not any(_same(given[arg], a) for a in allowed if a != ""):
                problems.append(f"{arg}={given[arg]!r}, allowed {allowed}")
        extra = sorted(set(given) - set(self.args))
        return problems + ([f"unexpected arguments {extra}"] if extra else [])


class Rubric(Spec):
    shorthand: ClassVar[str] = "rubric"
    rubric: str = Field(min_length=3)
    pass_score: float = Field(0.5, ge=0, le=1)

    async def grade(self, outcome: Outcome, judge: Judge | None) -> Grade:
        if judge is None:
            return _grade("judge", False, "no judge endpoint is configured")
        if outcome.answer is None:
            return Grade("judge", False, 0.0, "no answer to judge")
        score, reasoning = await judge.rubric(outcome.question, outcome.answer, self.rubric)
        if score is None:
            return Grade("judge", False, 0.0, f"the judge gave no usable verdict: {reasoning[:200]}")
        return Grade("judge", score >= self.pass_score, score, reasoning[:300])


GRADERS: dict[str, type[Spec]] = {
    "exact": Exact, "numeric": Numeric, "contains": Contains, "any_of": AnyOf, "regex": Regex,
    "json": JsonMatch, "tool_call": ToolCall, "judge": Rubric,
}


def parse_expect(expect: Any) -> list[Spec]:
    """The graders of an ``expect`` mapping, each spec validated.

    Raises:
        GraderSpecError: naming the grader (and its field) that is unknown or malformed.
    """
    if not isinstance(expect, dict) or not expect:
        raise GraderSpecError("expect", f"must map grader names to specs, e.g. {{numeric: 42}}; got {expect!r:.80}")
    return [_parse_one(str(name), spec) for name, spec in expect.items()]


def _parse_one(name: str, spec: Any) -> Spec:
    kind = GRADERS.get(name)
    if kind is None:
        raise GraderSpecError(f"expect.{name}", f"unknown grader {name!r}; known: {', '.join(GRADERS)}")
    try:
        if kind is ToolCall and not (isinstance(spec, dict) and "name" in spec):
            return ToolCall.from_bfcl(spec)
        if kind is JsonMatch:
            return JsonMatch(value=spec)
        full = isinstance(spec, dict) and set(spec) & set(kind.model_fields)  # else a bare value
        return kind.model_validate(spec if full else {kind.shorthand: spec})
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in (name, *problem["loc"]))
        raise GraderSpecError(f"expect.{where}", problem["msg"]) from None
    except ValueError as exc:
        raise GraderSpecError(f"expect.{name}", str(exc)) from None


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")  # a number as answers write it: 1,200 or -3.5


def _to_number(text: str) -> float:
    try:
        return float(text.replace(",", "").strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _plain(text: str) -> str:
    return " ".join(text.split()).rstrip(".")


def _subset(expected: Any, got: Any) -> bool:
    """``got`` holds ``expected``: objects may carry extra keys, everything else must be equal."""
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(k in got and _subset(v, got[k]) for k, v in expected.items())
    return expected == got


def _same(value: Any, allowed: Any) -> bool:
    if isinstance(allowed, str) and isinstance(value, str):
        return _squash(value) == _squash(allowed)
    if isinstance(allowed, int | float) and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) == float(allowed)
    if isinstance(allowed, list) and isinstance(value, list):
        return len(value) == len(allowed) and all(_same(v, a) for v, a in zip(value, allowed, strict=True))
    if isinstance(allowed, dict) and isinstance(value, dict):
        return set(value) == set(allowed) and all(
            _same(value[k], a if not isinstance(a, list) or len(a) != 1 else a[0]) for k, a in allowed.items())
    return value == allowed


def _squash(text: str) -> str:
    return re.sub(r"[\s,./\-_*^'\"]", "", text).casefold()


def _grade(name: str, ok: bool, why: str) -> Grade:
    return Grade(name, ok, 1.0 if ok else 0.0, "" if ok else why)

