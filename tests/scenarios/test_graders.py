"""Graders judge outcomes; their specs are checked when a suite loads."""

import asyncio

import pytest

from strop.scenarios.graders import GraderSpecError, Outcome, parse_expect
from strop.scenarios.judge import parse_verdict


def grade(expect, answer=None, calls=()):
    outcome = Outcome("question?", answer, calls=list(calls))
    return [asyncio.run(g.grade(outcome, None)) for g in parse_expect(expect)]


@pytest.mark.parametrize(("expect", "answer", "passed"), [
    ({"numeric": 7006652}, "7006652", True),
    ({"numeric": 7006652}, "The product is 7,006,652.", True),
    ({"numeric": "1,155"}, "1155", True),
    ({"numeric": 551}, "552", False),
    ({"numeric": 551}, "551 or maybe 552", False),  # the last number is the answer
    ({"numeric": {"value": 100, "tolerance": 0.05, "relative": True}}, "104", True),
    ({"numeric": -3.5}, "-3.5", True),
    ({"numeric": 3}, "three", False),
    ({"exact": "Paris"}, " paris. ", True),
    ({"exact": {"value": "Paris", "ignore_case": False}}, "paris", False),
    ({"contains": ["Paris", "France"]}, "Paris, France", True),
    ({"contains": ["Paris", "France"]}, "Paris", False),
    ({"any_of": ["25 million", "an estimated 25 million"]}, "About 25 MILLION people", True),
    ({"any_of": ["Gateshead"]}, "Newcastle", False),
    ({"regex": r"^\d{3}$"}, "728", True),
    ({"regex": r"^\d{3}$"}, "7280", False),
    ({"json": {"city": "Paris"}}, '{"city": "Paris", "country": "France"}', True),
    ({"json": {"city": "Paris"}}, '{"city": "Rome"}', False),
    ({"json": [1, 2]}, "not json", False),
    ({"numeric": 5, "contains": "five"}, "5", False),  # several graders: all must pass
])
def test_answer_graders(expect, answer, passed):
    assert all(g.passed for g in grade(expect, answer)) is passed


def test_no_answer_fails_every_answer_grader():
    for expect in ({"numeric": 1}, {"exact": "a"}, {"contains": "a"}, {"regex": "."}, {"json": {}}):
        assert not grade(expect, None)[0].passed


BFCL_TRUTH = [{"math.hypot": {"x": [4], "y": [5], "z": ["", 0]}}]


@pytest.mark.parametrize(("calls", "passed", "why"), [
    ([("math_hypot", {"x": 4, "y": 5, "z": None})], True, ""),
    ([("math_hypot", {"x": 4, "y": 5, "z": 0})], True, ""),
    ([("math_hypot", {"x": 4.0, "y": 5})], True, ""),
    ([("math_hypot", {"x": 4, "y": 6})], False, "y=6"),
    ([("math_hypot", {"x": 4})], False, "missing argument y"),
    ([("math_hypot", {"x": 4, "y": 5, "w": 1})], False, "unexpected arguments ['w']"),
    ([("think", {"thought": "..."})], False, "no call of math_hypot"),
    ([("math_hypot", {"x": 1, "y": 1}), ("math_hypot", {"x": 4, "y": 5})], False, "call 1 of 2: x=1"),  # a guess
    ([("math_hypot", {"x": 4, "y": 5}), ("math_hypot", {"x": 4.0, "y": 5})], True, ""),  # the same call twice
])
def test_tool_call_grader_follows_bfcl(calls, passed, why):
    result = grade({"tool_call": BFCL_TRUTH}, "done", calls)[0]
    assert result.passed is passed
    assert why in result.detail


@pytest.mark.parametrize(("calls", "score"), [
    ([("think", {"thought": "..."})], 0.0),                          # no call of the function
    ([("math_hypot", {"x": 1, "y": 1, "w": 2})], 0.4),                # the call, and z left out as allowed
    ([("math_hypot", {"x": 4, "y": 1})], 0.8),                        # one argument wrong
    ([("math_hypot", {"x": 1, "y": 1}), ("math_hypot", {"x": 4})], 0.7),  # the calls' mean
    ([("math_hypot", {"x": 4, "y": 5}), ("math_hypot", {"x": 4, "y": 1})], 0.9),  # a right call beside a wrong one
])
def test_tool_call_gives_partial_credit_to_a_failed_call(calls, score):
    result = grade({"tool_call": BFCL_TRUTH}, "done", calls)[0]
    assert not result.passed
    assert result.score == pytest.approx(score)


def test_tool_call_strings_ignore_case_and_punctuation():
    expect = {"tool_call": {"name": "get_weather", "args": {"city": ["New York, NY"], "unit": "celsius"}}}
    assert grade(expect, None, [("get_weather", {"city": "new york ny", "unit": "Celsius"})])[0].passed
    assert not grade(expect, None, [("get_weather", {"city": "Boston", "unit": "celsius"})])[0].passed


@pytest.mark.parametrize(("expect", "field", "words"), [
    ({"numerc": 5}, "expect.numerc", "unknown grader 'numerc'; known: exact, numeric"),
    ({"numeric": "five"}, "expect.numeric", "not a number"),
    ({"numeric": {"value": 1, "tolerance": -1}}, "expect.numeric.tolerance", "greater than or equal"),
    ({"regex": "("}, "expect.regex", "not a valid regular expression"),
    ({"contains": []}, "expect.contains", "at least 1"),
    ({"tool_call": {"f": 1}}, "expect.tool_call", "BFCL"),
    ({"judge": {"rubric": "ok", "pass_score": 3}}, "expect.judge", ""),
    ({"exact": {"value": "a", "colour": "red"}}, "expect.exact.colour", "Extra inputs"),
    ([], "expect", "must map grader names"),
])
def test_bad_specs_name_the_field(expect, field, words):
    with pytest.raises(GraderSpecError) as info:
        parse_expect(expect)
    assert info.value.field.startswith(field)
    assert words in str(info.value)


class FakeJudge:
    """Stands in for the LLM judge: returns a fixed verdict and records what it was asked."""

    def __init__(self, score):
        self.score, self.asked = score, []

    async def rubric(self, question, answer, rubric):
        self.asked.append((question, answer, rubric))
        return self.score, "because"


@pytest.mark.parametrize(("score", "passed"), [(1.0, True), (0.5, True), (0.25, False), (None, False)])
def test_judge_grader_passes_from_the_score(score, passed):
    judge = FakeJudge(score)
    [spec] = parse_expect({"judge": "Names the capital."})
    result = asyncio.run(spec.grade(Outcome("Capital of France?", "Paris"), judge))
    assert result.passed is passed
    assert judge.asked == [("Capital of France?", "Paris", "Names the capital.")]


def test_judge_grader_without_a_judge_or_answer_fails_clearly():
    [spec] = parse_expect({"judge": "Names the capital."})
    assert "no judge" in asyncio.run(spec.grade(Outcome("q", "a"), None)).detail
    assert "no answer" in asyncio.run(spec.grade(Outcome("q", None), FakeJudge(1.0))).detail


@pytest.mark.parametrize(("text", "score"), [
    ('{"reasoning": "fine", "score": 5}', 1.0),
    ('{"reasoning": "meh", "score": 3}', 0.5),
    ('{"reasoning": "no", "score": 1}', 0.0),
    ('{"reasoning": "x", "score": 9}', None),
    ('{"reasoning": "x"}', None),
    ("The answer is good.", None),
    ("[1, 2]", None),
])
def test_judge_verdicts_parse_or_are_refused(text, score):
    assert parse_verdict(text)[0] == score
