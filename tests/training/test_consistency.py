"""The label-free critic: normalised answers, the vote, grounding, and the critic stage that uses them."""

import json

import pytest

from strop.config import Settings
from strop.errors import StropError
from strop.training.consistency import (
    Episode,
    answer_key,
    by_relevance,
    call_key,
    consensus,
    episode_of,
    grounded,
    relevance,
    text_key,
)
from strop.training.critic import Critic
from strop.training.loop import Round
from strop.training.sources import Prompt
from strop.trajectories import Trajectory, TrajectoryStore


def call(name, args):
    return {"role": "assistant", "content": json.dumps({"tool": name, "args": args}),
            "tool_calls": [{"type": "function", "id": "c", "function": {"name": name, "arguments": json.dumps(args)}}]}


def episode(answer=None, question="What is 12 plus 30?", searched_for=None, calls=(), status="answered"):
    """A trajectory as the agent logs it: tool calls and results, then final_answer."""
    messages = [{"role": "user", "content": question}]
    if searched_for is not None:
        messages += [call("search_memory", {"query": question}),
                     {"role": "tool", "name": "search_memory", "content": searched_for}]
    for name, args in calls:
        messages += [call(name, args), {"role": "tool", "name": name, "content": "ok"}]
    if answer is not None:
        messages.append(call("final_answer", {"answer": answer, "sources": []}))
    return Trajectory(prompt=question, messages=messages, status=status, answer=answer)


@pytest.mark.parametrize(("a", "b"), [
    ("42", "The answer is 42."),
    ("1,200", "1200.0"),
    ("Paris", "paris!"),
    ("The capital is Paris", "the capital is paris."),
])
def test_equal_answers_normalise_to_one_key(a, b):
    assert text_key(a) == text_key(b) is not None


@pytest.mark.parametrize(("a", "b"), [("42", "43"), ("Paris", "Lyon"), ("42", "forty-two apples")])
def test_different_answers_keep_different_keys(a, b):
    assert text_key(a) != text_key(b)


def test_a_text_answer_is_keyed_by_what_it_adds_to_the_question():
    question = "What theorem was implicated by Manuel Blum's axioms?"
    assert text_key("The theorem implicated by Manuel Blum's axioms is the speed-up theorem.", question) == \
        text_key("speed-up theorem", question)
    assert text_key("The theorem was implicated by Manuel Blum's axioms.", question) is None  # says nothing new


def test_no_answer_and_abstention_have_no_key():
    assert text_key(None) is None and text_key("  ") is None
    assert text_key("I could not find that in memory.") is None


def test_a_call_key_ignores_argument_order_case_and_number_spelling():
    assert call_key("area", {"base": 10, "unit": "CM", "height": "5"}) == call_key(
        "area", {"height": 5.0, "unit": "cm", "base": "10", "note": None})
    assert call_key("area", {"base": 10}) != call_key("area", {"base": 11})


def test_with_declared_functions_the_answer_is_the_last_call_of_one():
    run = episode("done", calls=[("math.hypot_x", {"x": 1}), ("think", {"thought": "hm"}),
                                 ("math_hypot", {"x": 4, "y": 5})])
    assert answer_key(run, ["math.hypot"], "call") == call_key("math_hypot", {"x": 4, "y": 5})
    assert answer_key(run, ["math.hypot"]) == "call:math_hypot"  # by function, the default
    assert answer_key(episode("done"), ["math.hypot"]) is None  # never called: no answer


def test_voting_by_function_calls_of_one_function_agree_whatever_their_arguments():
    runs = [episode("done", calls=[("math_hypot", {"x": 4, "y": 5})]),
            episode("done", calls=[("math_hypot", {"x": 3, "y": 5})]),
            episode("done", calls=[("think", {"thought": "hm"})]), episode("done")]
    by_call = consensus([episode_of(t, t.id, failed=False, declared=["math.hypot"], call_vote="call") for t in runs])
    assert by_call.verdict == "no_majority"  # 1 against 1: the arguments differ
    by_function = consensus([episode_of(t, t.id, failed=False, declared=["math.hypot"], call_vote="function")
                             for t in runs])
    assert by_function.verdict == "majority" and by_function.answer == "call:math_hypot"
    assert by_function.scores[runs[0].id] == by_function.scores[runs[1].id] > by_function.scores[runs[2].id] == 0.0


def votes(*keys, errored=0):
    return [Episode(f"t{i}", key=k) for i, k in enumerate(keys)] + [
        Episode(f"e{i}", errored=True) for i in range(errored)]


def test_the_majority_answer_beats_minority_ones_by_its_vote_share():
    verdict = consensus(votes("num:42", "num:42", "num:41", "num:7"))
    assert verdict.verdict == "majority" and verdict.share == 0.5
    assert verdict.scores["t0"] == verdict.scores["t1"] == 0.75
    assert verdict.scores["t2"] == verdict.scores["t3"] == 0.125
    stronger = consensus(votes("num:42", "num:42", "num:42", "num:7"))
    assert stronger.scores["t0"] == 0.875 and stronger.scores["t3"] == 0.125


def test_an_episode_without_an_answer_scores_lowest_under_a_majority():
    verdict = consensus(votes("num:42", "num:42", "num:41", None))
    assert verdict.scores["t3"] == 0.0 < verdict.scores["t2"] < verdict.scores["t0"]


@pytest.mark.parametrize(("keys", "expected"), [
    (("num:1", "num:1", "num:2", "num:2"), "no_majority"),  # a tie at the top
    (("num:1", "num:2", "num:3", "num:4"), "no_majority"),
    (("num:1", "num:1", "num:1", "num:1"), "unanimous"),
    ((None, None, None, None), "no_answers"),  # garbage: nothing to vote on
])
def test_groups_without_a_clear_majority_give_equal_scores(keys, expected):
    verdict = consensus(votes(*keys))
    assert verdict.verdict == expected
    assert set(verdict.scores.values()) == {0.5}


def test_the_vote_share_must_reach_the_setting():
    keys = ("num:1", "num:1", "num:2", "num:3", "num:4")
    assert consensus(votes(*keys), min_share=0.5).verdict == "no_majority"  # 2 of 5
    assert consensus(votes(*keys), min_share=0.4).verdict == "majority"


def test_errored_episodes_score_none_and_an_all_errored_group_gives_nothing():
    verdict = consensus(votes("num:1", "num:1", "num:2", errored=1))
    assert verdict.scores["e0"] is None and verdict.verdict == "majority"
    nothing = consensus(votes(errored=3))
    assert nothing.verdict == "all_errored" and set(nothing.scores.values()) == {None}


def test_similar_text_answers_vote_together():
    keys = [text_key(a) for a in ("The Denver Broncos won", "Denver Broncos won", "The Carolina Panthers")]
    verdict = consensus(votes(*keys, text_key("denver broncos won it")))
    assert verdict.verdict == "majority" and verdict.share == 0.75


PASSAGE = "[0a1b2c3d] (0.71) Super Bowl 50 was won by the Denver Broncos, who beat the Carolina Panthers 24-10."
QUESTION = "Who won Super Bowl 50?"


def test_grounded_needs_a_search_whose_passage_holds_the_answer():
    assert grounded(episode("The Denver Broncos", QUESTION, searched_for=PASSAGE), 0.75)
    assert not grounded(episode("The New England Patriots", QUESTION, searched_for=PASSAGE), 0.75)
    assert not grounded(episode("The Denver Broncos", QUESTION), 0.75)  # never searched
    assert not grounded(episode("Super Bowl 50", QUESTION, searched_for=PASSAGE), 0.75)  # says nothing new


def test_ungrounded_votes_do_not_count_for_memory_questions_voting_by_answer():
    runs = [episode("Denver Broncos", QUESTION, searched_for=PASSAGE),
            episode("The Denver Broncos", QUESTION, searched_for=PASSAGE),
            episode("The Patriots", QUESTION), episode("The Patriots", QUESTION)]
    episodes = [episode_of(t, t.id, failed=False, memory=True, memory_vote="answer") for t in runs]
    verdict = consensus(episodes)
    assert verdict.verdict == "majority"
    assert verdict.scores[runs[0].id] > verdict.scores[runs[2].id] == 0.0
    as_plain = consensus([episode_of(t, t.id, failed=False) for t in runs])
    assert as_plain.verdict == "no_majority"  # 2 against 2 when grounding is not asked for


OTHER = "[9f8e7d6c] (0.64) The Carolina Panthers were founded in 1993 and play in Charlotte."


def test_memory_questions_vote_by_the_passage_their_last_search_ranked_first():
    runs = [episode("Denver Broncos", QUESTION, searched_for=f"{PASSAGE}\n{OTHER}"),
            episode("It was the Broncos of Denver, 24-10.", QUESTION, searched_for=PASSAGE),  # other words, one source
            episode("The Carolina Panthers", QUESTION, searched_for=f"{OTHER}\n{PASSAGE}"),
            episode(None, QUESTION, searched_for=PASSAGE)]  # no answer: no vote
    verdict = consensus([episode_of(t, t.id, failed=False, memory=True, memory_vote="passage") for t in runs])
    assert verdict.verdict == "majority" and verdict.answer == "passage:0a1b2c3d" and verdict.share == 0.5
    assert verdict.scores[runs[0].id] == verdict.scores[runs[1].id] > verdict.scores[runs[2].id] > 0.0
    assert verdict.scores[runs[3].id] == 0.0
    searched_twice = episode("Denver Broncos", QUESTION, searched_for=PASSAGE)
    searched_twice.messages[3:3] = [{"role": "tool", "name": "search_memory", "content": OTHER}]
    assert episode_of(searched_twice, "t", failed=False, memory=True, memory_vote="passage").key == "passage:9f8e7d6c"
    never = episode_of(episode("Denver Broncos", QUESTION), "t", failed=False, memory=True, memory_vote="passage")
    assert never.key is None


PARTIAL = "[11223344] (0.52) The Super Bowl is the last game of the season."  # two of the question's four words


def test_relevance_is_the_share_of_the_question_the_best_passage_found_holds():
    assert relevance(episode("Denver Broncos", QUESTION, searched_for=f"{OTHER}\n{PASSAGE}")) == 1.0
    assert relevance(episode("The Super Bowl", QUESTION, searched_for=PARTIAL)) == 0.5
    assert relevance(episode("The Panthers", QUESTION, searched_for=OTHER)) == 0.0
    assert relevance(episode("Denver Broncos", QUESTION)) == 0.0  # never searched
    assert relevance(episode(None, QUESTION, searched_for=PASSAGE)) == 0.0  # found it but never answered


def test_memory_questions_by_relevance_prefer_episodes_whose_search_found_clearly_more():
    runs = [episode("Denver Broncos", QUESTION, searched_for=PASSAGE),
            episode("The Super Bowl", QUESTION, searched_for=PARTIAL),
            episode("The Panthers", QUESTION, searched_for=OTHER)]
    verdict = by_relevance([episode_of(t, t.id, failed=False, memory=True, memory_vote="relevance") for t in runs]
                           + [Episode("broken", errored=True)])
    assert verdict.verdict == "relevant" and verdict.share == 1.0
    assert [verdict.scores[t.id] for t in runs] == [1.0, 0.0, 0.0] and verdict.scores["broken"] is None
    assert "found it" in verdict.why(runs[0].id)[0] and "clearly less" in verdict.why(runs[2].id)[0]


@pytest.mark.parametrize(("found", "verdict", "scores"), [
    ([0.8, 0.7, 0.4], "relevant", [1.0, 0.75, 0.0]),  # within the margin of the best: a near miss, not a pair
    ([0.6, 0.4, 0.6], "relevant", [1.0, 0.0, 1.0]),  # 0.6 - 0.4 is the margin, whatever the float says
    ([0.6, 0.5, 0.45], "alike", [0.5, 0.5, 0.5]),
])
def test_relevance_scores_by_the_gap_to_the_best_find(found, verdict, scores):
    result = by_relevance([Episode(f"t{i}", relevance=r) for i, r in enumerate(found)])
    assert result.verdict == verdict and [result.scores[f"t{i}"] for i in range(3)] == scores


# -- the critic stage ---------------------------------------------------------------------------------------------

def round_with(tmp_path, answers, passed, source="suite", status=None):
    store = TrajectoryStore(tmp_path / "t.sqlite")
    rnd = Round(tmp_path / "round-0001")
    rnd.dir.mkdir()
    for k, (answer, ok) in enumerate(zip(answers, passed, strict=True)):
        run = episode(answer)
        store.append(run)
        rnd.append("rollouts.jsonl", {"prompt": "p1", "k": k, "trajectory": run.id, "passed": ok,
                                      "grades": [{"score": float(ok)}], "status": status or "passed"})
    prompt = Prompt("p1", source, "What is 12 plus 30?", suite="arithmetic" if source == "suite" else None,
                    case="c1")
    return store, rnd, {"p1": prompt}


def test_without_gold_the_critic_scores_suite_prompts_by_the_vote_not_the_graders(tmp_path):
    # the graders say the minority answer passed; the label-free critic never reads them
    store, rnd, prompts = round_with(tmp_path, ["42", "42", "41", "7"], [False, False, True, False])
    settings = Settings(state_dir=tmp_path, critic={"use_gold": False})
    result = Critic(settings, None, store).run(rnd, prompts)
    scores = [row["score"] for row in rnd.lines("scores.jsonl")]
    assert scores == [0.75, 0.75, 0.125, 0.125] and "label-free" in result["critic"]
    assert result["groups"]["vote_majority"] == 1 and result["groups"]["disagree"] == 1


@pytest.mark.parametrize(("vote", "verdict"), [("answer", "no_majority"), ("passage", "majority"),
                                               ("relevance", "relevant")])
def test_the_critic_votes_on_memory_questions_as_memory_vote_says(tmp_path, vote, verdict):
    store = TrajectoryStore(tmp_path / "t.sqlite")
    runs = [episode("Denver Broncos", QUESTION, searched_for=PASSAGE),
            episode("It was the Broncos of Denver, 24-10.", QUESTION, searched_for=PASSAGE),
            episode("The Panthers", QUESTION, searched_for=OTHER)]  # three grounded answers, two sources
    for run in runs:
        store.append(run)
    records = [{"trajectory": run.id, "status": "failed"} for run in runs]
    critic = Critic(Settings(state_dir=tmp_path, critic={"memory_vote": vote}), None, store)
    assert critic.consensus_of(Prompt("p1", "synthetic", QUESTION), records).verdict == verdict


def test_with_gold_suite_prompts_keep_their_graders(tmp_path):
    store, rnd, prompts = round_with(tmp_path, ["42", "42", "41", "7"], [False, False, True, False])
    result = Critic(Settings(state_dir=tmp_path), None, store).run(rnd, prompts)
    assert [row["score"] for row in rnd.lines("scores.jsonl")] == [0.0, 0.0, 1.0, 0.0]
    assert not rnd.lines("consensus.jsonl") and result["groups"]["disagree"] == 1


def test_chat_prompts_use_the_vote_and_unanimous_groups_are_counted(tmp_path):
    store, rnd, prompts = round_with(tmp_path, ["42"] * 4, [False] * 4, source="chat")
    result = Critic(Settings(state_dir=tmp_path), None, store).run(rnd, prompts)
    assert result["groups"] == {"disagree": 0, "all_alike": 1, "all_errored": 0, "vote_unanimous": 1}


def test_an_all_errored_group_is_counted_not_a_crash(tmp_path):
    store, rnd, prompts = round_with(tmp_path, ["42"] * 3, [False] * 3, source="chat", status="error")
    result = Critic(Settings(state_dir=tmp_path), None, store).run(rnd, prompts)
    assert result["scored"] == 0 and result["groups"]["vote_all_errored"] == 1


def test_a_resumed_critic_scores_each_episode_once(tmp_path):
    store, rnd, prompts = round_with(tmp_path, ["42", "42", "41", "7"], [False] * 4, source="chat")
    critic = Critic(Settings(state_dir=tmp_path), None, store)
    critic.run(rnd, prompts)
    rows = rnd.lines("scores.jsonl")
    (rnd.dir / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))  # killed mid-group
    critic.run(rnd, prompts)
    assert [r["score"] for r in rnd.lines("scores.jsonl")] == [r["score"] for r in rows]
    assert len(rnd.lines("consensus.jsonl")) == 1


def test_a_critic_resumed_under_other_vote_settings_stops_and_names_them(tmp_path):
    store, rnd, prompts = round_with(tmp_path, ["42", "42", "41", "7"], [False] * 4, source="chat")
    Critic(Settings(state_dir=tmp_path), None, store).run(rnd, prompts)
    scored = rnd.lines("scores.jsonl")
    changed = Critic(Settings(state_dir=tmp_path, critic={"call_vote": "call"}), None, store)
    with pytest.raises(StropError, match=r"critic\.call_vote = 'function' \(now 'call'\)"):
        changed.run(rnd, prompts)
    assert rnd.lines("scores.jsonl") == scored  # nothing added or lost
    Critic(Settings(state_dir=tmp_path), None, store).run(rnd, prompts)  # the same settings resume
