"""The pairwise judge and its calibration.

A loopback server (tests/conftest.py) stands in for vLLM's OpenAI-compatible chat completions (and /v1/models):
each test scripts the verdict JSON it returns and, like vLLM with ``logprobs``/``top_logprobs``, the
tokens of that verdict with the alternatives to the winner token. It records every request, so the tests
see which orders were asked. Real vLLM is covered by tests/integration/test_critic.py.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable

import pytest
from typer.testing import CliRunner

from strop.cli import app
from strop.config import CriticSettings
from strop.errors import StropError
from strop.scenarios.judge import (
    LabelledPair,
    LLMJudge,
    Preference,
    Reading,
    agreement,
    calibrate,
    checklist,
    combine,
    load_pairs,
    presentation_orders,
    read_ranking,
    report,
    sample_pairs,
    wilson,
)
from strop.serving.endpoint import Endpoint
from tests.conftest import free_port

Script = Callable[[str], dict]  # the user prompt -> the body of the reply


def verdict(winner: str, alternatives: dict[str, float] | None = None, split_value: bool = True) -> dict:
    """A chat completion whose content is the verdict JSON; with ``alternatives`` (token -> probability of
    the first token of the winner value) it carries logprobs as vLLM sends them."""
    content = json.dumps({"reasoning": "B is right.", "winner": winner}, separators=(",", ":"))
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content},
              "logprobs": None}
    if alternatives is not None:
        choice["logprobs"] = {"content": _tokens(winner, alternatives, split_value)}
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "fake", "choices": [choice]}


def _tokens(winner: str, alternatives: dict[str, float], split_value: bool) -> list[dict]:
    def tok(text: str, alts: dict[str, float] | None = None) -> dict:
        alts = alts or {text: 1.0}
        top = [{"token": t, "logprob": math.log(p) if p > 0 else -9999.0, "bytes": None} for t, p in alts.items()]
        return {"token": text, "logprob": top[0]["logprob"] if text in alts else 0.0, "bytes": None,
                "top_logprobs": top + [{"token": "<|im_start|>", "logprob": -9999.0, "bytes": None}]}

    head = ['{"', "reason", "ing", '":"', "B", " is", " right", '."', ",", '"', "winner", '"']
    if split_value:  # the value's first token stands alone, as SmolLM2's tokenizer does it
        value = [tok(':"'), tok(winner[0], alternatives)]
    else:  # the value's first token also carries the quote before it
        value = [tok(':"' + winner[0], {':"' + t: p for t, p in alternatives.items()})]
    tail = [tok(winner[1:])] if len(winner) > 1 else []
    return [tok(t) for t in head] + value + tail + [tok('"}')]


class FakeJudge:
    """The judge's server: answers each chat request with ``script(user prompt)`` (a "status" key sets the status)."""

    def __init__(self, server, script: Script):
        self.server, self.script, self.url = server, script, server.url
        server.route("GET", "/v1/models", lambda _: {"data": [{"id": "fake"}]})
        server.route("POST", "/v1/chat/completions", self._answer)

    @property
    def requests(self) -> list[dict]:
        return self.server.bodies("/v1/chat/completions")

    def _answer(self, body: dict):
        reply = self.script(body["messages"][-1]["content"])
        return reply.pop("status", 200), reply


@pytest.fixture
def fake(openai_server):
    return FakeJudge(openai_server, lambda prompt: verdict("A"))


def judge_at(url: str, tie_margin: float = 0.1) -> LLMJudge:
    judge = LLMJudge(Endpoint(url, "fake", "EMPTY", managed=False), CriticSettings(tie_margin=tie_margin))
    judge.client = judge.client.with_options(max_retries=0)
    return judge


def compare(judge: LLMJudge, a: str = "right answer", b: str = "wrong answer") -> Preference:
    async def run() -> Preference:
        try:
            return await judge.compare("Question?", a, b)
        finally:
            await judge.close()
    return asyncio.run(run())


def first_shown(prompt: str) -> str:
    return prompt.split("Answer A: ")[1].split("\n\nAnswer B: ")[0]


def test_both_orders_are_asked_with_schema_and_logprobs(fake):
    compare(judge_at(fake.url))
    assert sorted(first_shown(r["messages"][-1]["content"]) for r in fake.requests) == ["right answer",
                                                                                         "wrong answer"]
    for request in fake.requests:
        assert request["logprobs"] is True and request["top_logprobs"] == 5
        schema = request["response_format"]["json_schema"]["schema"]
        assert list(schema["properties"]) == ["reasoning", "winner"]  # reasoning comes before the verdict
        assert schema["properties"]["winner"]["enum"] == ["A", "B", "tie"]


@pytest.mark.parametrize("alternatives", [None, {"A": 0.9, "B": 0.1}])
def test_a_judge_that_always_says_a_is_a_tie(fake, alternatives):
    fake.script = lambda prompt: verdict("A", alternatives)
    preference = compare(judge_at(fake.url))
    assert preference.winner == "tie" and preference.p_a == pytest.approx(0.5)


@pytest.mark.parametrize("split_value", [True, False])
def test_preference_is_read_from_the_winner_logprobs(fake, split_value):
    # Whichever comes first, the judge gives the right answer 0.8 and the wrong one 0.2 (a tie 0.1 on top).
    def script(prompt: str) -> dict:
        right_first = first_shown(prompt) == "right answer"
        alternatives = {"A": 0.6, "B": 0.2, "tie": 0.2} if right_first else {"B": 0.6, "A": 0.2, "tie": 0.2}
        return verdict("A" if right_first else "B", alternatives, split_value)

    fake.script = script
    preference = compare(judge_at(fake.url))
    assert preference.source == "logprobs" and preference.winner == "a"
    assert preference.p_a == pytest.approx(0.7)  # (0.6 + 0.2 / 2) / 1.0 in both orders
    assert preference.reasoning == ("B is right.", "B is right.")


def test_without_logprobs_the_verdict_decides(fake):
    fake.script = lambda prompt: verdict("A" if first_shown(prompt) == "wrong answer" else "B")
    preference = compare(judge_at(fake.url))
    assert (preference.source, preference.winner, preference.p_a) == ("verdict", "b", 0.0)


def test_forbidden_alternatives_do_not_count(fake):
    fake.script = lambda prompt: verdict("B", {"B": 1.0, "A": 0.0}) if first_shown(prompt) == "right answer" \
        else verdict("A", {"A": 1.0, "B": 0.0})
    preference = compare(judge_at(fake.url))
    assert (preference.source, preference.winner, preference.p_a) == ("logprobs", "b", 0.0)


def test_a_narrow_preference_is_a_tie_within_the_margin(fake):
    fake.script = lambda prompt: verdict("A", {"A": 0.55, "B": 0.45}) if first_shown(prompt) == "right answer" \
        else verdict("B", {"B": 0.55, "A": 0.45})
    assert compare(judge_at(fake.url)).winner == "tie"
    assert compare(judge_at(fake.url, tie_margin=0.02)).winner == "a"


@pytest.mark.parametrize(("reply", "reason"), [
    ({"choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant",
                                                                      "content": '{"reasoning":"ab'}}]},
     "no verdict"),
    (verdict("C"), "unknown winner 'C'"),
    ({"status": 500, "error": {"message": "engine died"}}, "judge call failed: InternalServerError"),
])
def test_garbage_or_a_failed_call_is_a_tie_with_the_reason(fake, reply, reason):
    fake.script = lambda prompt: json.loads(json.dumps(reply))
    preference = compare(judge_at(fake.url))
    assert (preference.winner, preference.source, preference.p_a) == ("tie", "none", 0.5)
    assert reason in preference.reasoning[0]


def test_a_server_that_is_down_is_a_tie_with_the_reason():
    preference = compare(judge_at(f"http://127.0.0.1:{free_port()}/v1"))
    assert (preference.winner, preference.source) == ("tie", "none")
    assert "APIConnectionError" in preference.reasoning[0] and "APIConnectionError" in preference.reasoning[1]


def test_one_failed_order_gives_no_verdict():
    failed = Reading(None, "judge call failed: timeout")
    assert combine(Reading(1.0, "A wins", True), failed, 0.1) == Preference(0.5, "tie", ("A wins", failed.reasoning),
                                                                           "none")


# --- calibration -------------------------------------------------------------------------------------------------

def pair_line(i: int, category: str = "helpful") -> str:
    return json.dumps({"id": f"p{i}", "category": category, "prompt": f"question {i}",
                       "chosen": f"good {i}", "rejected": f"bad {i}"})


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [pair_line(0), pair_line(1), "{not json", pair_line(2, "honest"), "",
             json.dumps({"id": "p9", "category": "x", "prompt": "q", "chosen": "c"}), pair_line(3, "honest")]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_lines_are_skipped_and_reported_with_their_line(pairs_file):
    pairs, problems = load_pairs(pairs_file)
    assert [p.id for p in pairs] == ["p0", "p1", "p2", "p3"]
    assert [(p.line, p.path) for p in problems] == [(3, str(pairs_file)), (6, str(pairs_file))]
    assert "rejected" in problems[1].message
    with pytest.raises(StropError, match="does not exist"):
        load_pairs(pairs_file.with_name("missing.jsonl"))


class ScriptedJudge:
    """Prefers the answer with "good" in it, except on the pairs it is told to get wrong or call a tie."""

    def __init__(self, wrong=(), ties=()):
        self.wrong, self.ties, self.seen = set(wrong), set(ties), []

    async def compare(self, question: str, answer_a: str, answer_b: str) -> Preference:
        self.seen.append((answer_a, answer_b))
        if question in self.ties:
            return Preference(0.5, "tie", ("", ""), "none")
        a_good = answer_a.startswith("good") != (question in self.wrong)
        return Preference(0.9 if a_good else 0.1, "a" if a_good else "b", ("", ""), "logprobs")


def test_calibration_counts_agreement_ties_and_intervals(pairs_file):
    pairs, _ = load_pairs(pairs_file)
    judge = ScriptedJudge(wrong={"question 1"}, ties={"question 3"})
    outcomes = asyncio.run(calibrate(judge, pairs, seed=1, concurrency=2))
    assert {a.startswith("good") for a, _ in judge.seen} == {True, False}  # chosen shown as A and as B
    assert [o.verdict for o in outcomes] == ["agree", "disagree", "agree", "tie"]
    figures = report(outcomes)
    overall = figures["all"]
    assert (overall["n"], overall["agree"], overall["disagree"], overall["ties"]) == (4, 2, 1, 1)
    assert overall["agreement"] == pytest.approx(2 / 3)
    assert overall["tie_rate"] == 0.25 and overall["agreement_ties_half"] == pytest.approx(2.5 / 4)
    assert overall["mean_p_chosen"] == pytest.approx((0.9 + 0.1 + 0.9 + 0.5) / 4)
    assert (overall["logprobs"], overall["failed"]) == (3, 1)
    assert overall["ci95"] == pytest.approx(list(wilson(2, 3)))
    assert figures["files"]["pairs.jsonl"]["n"] == 4
    assert figures["files"]["pairs.jsonl"]["categories"]["honest"]["agreement"] == 1.0  # p2 agrees, p3 is a tie


def test_wilson_interval():
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
    assert wilson(0, 0) == (0.0, 1.0)
    assert agreement([])["agreement"] is None


def test_sampling_is_deterministic_and_keeps_file_order():
    pairs = [LabelledPair(str(i), "c", "q", "a", "b", "f") for i in range(20)]
    first = sample_pairs(pairs, 5, seed=3)
    assert first == sample_pairs(pairs, 5, seed=3) and len(first) == 5
    assert [int(p.id) for p in first] == sorted(int(p.id) for p in first)
    assert sample_pairs(pairs, 50, seed=3) == pairs


def test_calibrate_command_against_a_judge_server(fake, pairs_file, tmp_path, monkeypatch):
    fake.script = lambda prompt: verdict("A", {"A": 0.9, "B": 0.1}) if first_shown(prompt).startswith("good") \
        else verdict("B", {"B": 0.9, "A": 0.1})
    monkeypatch.setenv("STROP_CRITIC__LLM_URL", fake.url)
    result = CliRunner().invoke(app, ["critic", "calibrate", str(pairs_file), "--limit", "3",
                                      "--json", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    assert f"{pairs_file}:3" in result.output and f"{pairs_file}:6" in result.output
    figures = json.loads((tmp_path / "c.json").read_text())
    assert (figures["all"]["n"], figures["all"]["agreement"], figures["all"]["logprobs"]) == (3, 1.0, 3)
    assert len(fake.requests) == 6 and len(figures["pairs"]) == 3
    assert "agree" in result.output and "100%" in result.output


def test_calibrate_command_fails_when_the_judge_never_answers(pairs_file, monkeypatch, fake):
    fake.script = lambda prompt: {"status": 500, "error": {"message": "engine died"}}
    monkeypatch.setenv("STROP_CRITIC__LLM_URL", fake.url)
    monkeypatch.setattr(LLMJudge, "__init__", _no_retries(LLMJudge.__init__))
    result = CliRunner().invoke(app, ["critic", "calibrate", str(pairs_file)])
    assert result.exit_code == 1 and "no verdict on any pair" in result.output
    assert "InternalServerError" in result.output and "Traceback" not in result.output


def _no_retries(init):
    def wrapped(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.client = self.client.with_options(max_retries=0)
    return wrapped


def test_calibrate_command_with_no_valid_pairs_fails_cleanly(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("nope\n")
    result = CliRunner().invoke(app, ["critic", "calibrate", str(path)])
    assert result.exit_code == 1 and "No preference pairs" in result.output
    assert f"{path}:1" in result.output


# -- the group ranker -----------------------------------------------------------------------------------------------

def pick(best: str, alternatives: dict[str, float] | None = None) -> dict:
    """A ranking reply picking answer ``best``; with ``alternatives`` (label -> probability) it carries the
    logprobs of the token that starts the ``best`` value, as vLLM sends them."""
    content = json.dumps({"reasoning": "one is right.", "best": best}, separators=(",", ":"))
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content},
              "logprobs": None}
    if alternatives is not None:
        def tok(text: str, alts: dict[str, float] | None = None) -> dict:
            top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in (alts or {text: 1.0}).items()]
            return {"token": text, "logprob": 0.0, "bytes": None, "top_logprobs": top}

        head = [tok(t) for t in ('{"', "reason", "ing", '":"', "one", " is", " right", '."', ",", '"', "best", '"',
                                 ':"')]
        choice["logprobs"] = {"content": [*head, tok(best, alternatives), tok('"}')]}
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "fake", "choices": [choice]}


def shown_answers(prompt: str) -> list[str]:
    """The answers of a ranking prompt in the order shown."""
    return [line.split(". ", 1)[1] for line in prompt.split("Answers:\n")[1].splitlines() if ". " in line]


def rank(judge: LLMJudge, answers: list[str], orders: int = 2):
    async def run():
        try:
            return await judge.rank("What is 2 + 3?", answers, checklist("What is 2 + 3?"), orders)
        finally:
            await judge.close()
    return asyncio.run(run())


def test_presentation_orders_put_each_answer_in_different_places():
    orders = presentation_orders(3, 3, seed=5)
    assert all(sorted(o) == [0, 1, 2] for o in orders)
    assert {o[0] for o in orders} == {0, 1, 2}  # every answer is shown first once
    assert presentation_orders(3, 3, seed=5) == orders and len(presentation_orders(3, 9, 0)) == 3


def test_a_ranker_that_always_picks_the_first_place_prefers_no_answer(fake):
    fake.script = lambda prompt: pick("1")
    ranking = rank(judge_at(fake.url), ["5", "6", "7"], orders=3)
    assert ranking.best == pytest.approx([1 / 3] * 3)
    assert [ranking.preference(i) for i in range(3)] == pytest.approx([0.5] * 3)


def test_the_ranker_follows_the_answer_not_its_place_and_reads_logprobs(fake):
    def script(prompt: str) -> dict:
        where = str(shown_answers(prompt).index("5") + 1)
        return pick(where, {where: 0.8, **{str(i): 0.1 for i in (1, 2, 3) if str(i) != where}})

    fake.script = script
    ranking = rank(judge_at(fake.url), ["6", "5", "7"], orders=3)
    assert ranking.best == pytest.approx([0.1, 0.8, 0.1]) and ranking.failed == 0 and ranking.from_logprobs == 3
    assert ranking.preference(1) == 1.0 and ranking.preference(0) == pytest.approx(0.5 + (0.1 - 1 / 3) * 1.5)
    request = fake.requests[0]
    assert request["response_format"]["json_schema"]["schema"]["properties"]["best"]["enum"] == ["1", "2", "3"]
    assert "Checklist:\n- It answers exactly what the question asks." in request["messages"][-1]["content"]


@pytest.mark.parametrize("reply", [
    {"status": 500, "error": {"message": "boom"}},
    {"id": "x", "object": "chat.completion", "created": 0, "model": "fake", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "not json"}}]},
])
def test_a_ranker_that_gives_garbage_or_fails_is_neutral_not_a_crash(fake, reply):
    fake.script = lambda prompt: json.loads(json.dumps(reply))
    ranking = rank(judge_at(fake.url), ["5", "6"])
    assert ranking.failed == ranking.orders == 2 and ranking.preference(0) == ranking.preference(1) == 0.5


def test_read_ranking_rejects_a_pick_outside_the_answers():
    assert read_ranking('{"reasoning": "x", "best": "4"}', None, 3)[0] is None
    assert read_ranking('{"reasoning": "x", "best": "2"}', None, 3)[0] == [0.0, 1.0, 0.0]


@pytest.mark.parametrize(("question", "functions", "memory", "expected"), [
    ("What is 12 times 3?", (), False, "one number"),
    ("How many apples are left?", (), False, "one number"),
    ("Find the area of a circle.", ("geometry_area",), False, "calls geometry_area"),
    ("Who won Super Bowl 50?", (), True, "retrieved passage"),
])
def test_the_checklist_follows_the_question(question, functions, memory, expected):
    items = checklist(question, functions, memory)
    assert any(expected in item for item in items) and 2 <= len(items) <= 4


def test_only_ties_of_the_checks_go_to_the_ranker():
    from strop.training.critic import tied_sets

    episodes = [("a", "5", 0.75), ("b", "5", 0.75), ("c", "6", 0.7), ("d", "7", 0.1), ("e", "8", 0.0)]
    assert tied_sets(episodes, 0.5) == [episodes[:3], episodes[3:]]
    assert tied_sets([("a", "5", 0.9), ("b", "5.", 0.9)], 0.5) == []  # one answer: nothing to break


def test_calibration_can_ask_the_group_ranker(fake):
    def script(prompt: str) -> dict:
        return pick(str(shown_answers(prompt).index("right answer") + 1))

    fake.script = script
    pairs = [LabelledPair(f"p{i}", "c", "Question?", "right answer", "wrong answer", "f.jsonl") for i in range(4)]
    judge = judge_at(fake.url)

    async def run():
        try:
            return await calibrate(judge, pairs, seed=3, mode="group")
        finally:
            await judge.close()

    outcomes = asyncio.run(run())
    assert {o.verdict for o in outcomes} == {"agree"} and {o.chosen_as for o in outcomes} == {"a", "b"}
    assert all("Checklist:" in r["messages"][-1]["content"] for r in fake.requests)
