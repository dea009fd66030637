"""Preference pairs are built at the first decision where two episodes differ."""

import json
from dataclasses import replace

from strop.training.pairs import Scored, build_pairs, decisions, human_pair, pair_episodes
from strop.trajectories import StepTiming, Trajectory


def action(tool, **args):
    return json.dumps({"tool": tool, "args": args})


def episode(question, *steps, status="answered", earlier=()):
    """A trajectory from (action, tool result or None) steps, as the agent records them."""
    messages = [*earlier, {"role": "user", "content": question}]
    for text, result in steps:
        messages.append({"role": "assistant", "content": text, "tool_calls": []})
        if result is not None:
            messages.append({"role": "tool", "name": json.loads(text)["tool"], "content": result})
    if status == "budget_exhausted":
        messages.append({"role": "assistant", "content": "I could not finish within 2 steps."})
    timings = [StepTiming("model", "m", 1.0) for _ in steps]
    return Trajectory(prompt=question, messages=messages, status=status, steps=timings)


def context(history):
    return [{"role": "system", "content": "SYSTEM"}, *history]


CALC = action("calculator", expression="12 * 3")
RIGHT = action("final_answer", answer="36", sources=[])
WRONG = action("final_answer", answer="35", sources=[])
GUESS = action("think", thought="It is about 35.")


def test_the_pair_is_the_first_differing_decision_with_the_shared_history():
    good = Scored(episode("12 * 3?", (CALC, "36"), (RIGHT, None)), 1.0, context)
    bad = Scored(episode("12 * 3?", (CALC, "36"), (WRONG, None)), 0.0, context)
    pair = pair_episodes(good, bad, "v1")
    assert pair["prompt"] == [{"role": "system", "content": "SYSTEM"}, {"role": "user", "content": "12 * 3?"},
                              {"role": "assistant", "content": CALC}, {"role": "tool", "content": "36"}]
    assert pair["chosen"] == [{"role": "assistant", "content": RIGHT}]
    assert pair["rejected"] == [{"role": "assistant", "content": WRONG}]
    assert pair["provenance"]["step"] == 1 and pair["provenance"]["chosen_score"] == 1.0
    assert pair["provenance"]["chosen_trajectory"] == good.trajectory.id


SEARCH = action("search_memory", query="lead")
ASKED = [{"role": "system", "content": "Answer from the notes."}, {"role": "user", "content": "Notes: ... Who leads?"}]


def grounded(reply, answer, asked=ASKED):
    """A memory question answered by a plain call over the passages: strop wrote the final action."""
    run = episode("Who leads?", (SEARCH, "[8ca0dbec] (0.9) Ada leads."), (action("final_answer", answer=answer), None))
    run.answered_from = {"prompt": asked, "reply": reply}
    return run


def test_a_memory_answer_is_paired_as_the_plain_call_that_made_it():
    good = Scored(grounded("Ada.", "Ada"), 1.0, context)
    bad = Scored(grounded("The printer.", "The lead is Ada."), 0.0, context)  # strop rewrote it
    pair = pair_episodes(good, bad, "v1")
    assert pair["prompt"] == ASKED
    assert pair["chosen"] == [{"role": "assistant", "content": "Ada."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "The printer."}]
    assert [d.read for d in decisions(good.trajectory)] == [None, ASKED]
    other = Scored(grounded("The printer.", "x", asked=[*ASKED[:1], {"role": "user", "content": "Notes: other"}]),
                   0.0, context)
    assert pair_episodes(good, other, "v1") is None  # different passages read: no shared decision


def test_tool_results_are_never_a_completion():
    good = Scored(episode("12 * 3?", (CALC, "36"), (RIGHT, None)), 1.0, context)
    bad = Scored(episode("12 * 3?", (GUESS, "ok"), (WRONG, None)), 0.0, context)
    pair = pair_episodes(good, bad, "v1")
    assert pair["chosen"][0]["content"] == CALC and pair["rejected"][0]["content"] == GUESS
    assert all(m["role"] != "tool" for m in pair["chosen"] + pair["rejected"])


def test_identical_or_diverging_environments_give_no_pair():
    same = Scored(episode("q?", (CALC, "36"), (RIGHT, None)), 1.0, context)
    assert pair_episodes(same, Scored(episode("q?", (CALC, "36"), (RIGHT, None)), 0.0, context), "v1") is None
    other_result = Scored(episode("q?", (CALC, "37"), (WRONG, None)), 0.0, context)
    assert pair_episodes(same, other_result, "v1") is None  # same action, different result: no shared decision


def test_budget_notes_and_earlier_chat_turns_are_not_actions():
    earlier = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": action("final_answer", answer="hi")}]
    run = episode("12 * 3?", (CALC, "36"), (GUESS, "ok"), status="budget_exhausted", earlier=earlier)
    steps = decisions(run)
    assert [s.action for s in steps] == [CALC, GUESS]
    assert steps[0][0][:2] == [{"role": "user", "content": "hi"},
                               {"role": "assistant", "content": action("final_answer", answer="hi")}]


def test_groups_pair_the_best_with_each_clearly_worse_episode_and_deduplicate():
    good = episode("12 * 3?", (CALC, "36"), (RIGHT, None))
    groups = [
        [Scored(good, 1.0, context), Scored(episode("12 * 3?", (CALC, "36"), (WRONG, None)), 0.0, context),
         Scored(episode("12 * 3?", (GUESS, "ok"), (WRONG, None)), 0.2, context),
         Scored(episode("12 * 3?", (CALC, "36"), (WRONG, None)), 0.0, context),  # duplicate pair
         Scored(episode("12 * 3?", (CALC, "36"), (RIGHT, None)), 0.9, context)],  # within the margin
        [Scored(good, 1.0, context), Scored(good, 0.8, context)],  # no margin
    ]
    pairs, why = build_pairs(groups, min_margin=0.5, critic="v1")
    assert len(pairs) == 2 and why == {"groups": 2, "no_margin": 1, "no_divergence": 0, "duplicates": 1,
                                     "copied_number": 0, "search_undecided": 0}
    assert {p["rejected"][0]["content"] for p in pairs} == {WRONG, GUESS}


def test_a_capped_prompt_keeps_the_pairs_against_its_worst_scored_episodes():
    good = Scored(episode("12 * 3?", (CALC, "36"), (RIGHT, None)), 1.0, context)
    near = Scored(episode("12 * 3?", (GUESS, "ok"), (WRONG, None)), 0.4, context)
    far = Scored(episode("12 * 3?", (CALC, "36"), (WRONG, None)), 0.0, context)
    assert len(build_pairs([[good, near, far]], min_margin=0.5, critic="v1")[0]) == 2
    pairs, _ = build_pairs([[good, far, near]], min_margin=0.5, critic="v1", most=1)
    assert [p["rejected"][0]["content"] for p in pairs] == [WRONG]
    assert pairs[0]["provenance"]["rejected_score"] == 0.0


def test_a_graded_pass_against_a_near_miss_is_a_pair_only_with_pass_over_fail():
    passed = Scored(episode("12 * 3?", (CALC, "36"), (RIGHT, None)), 1.0, context, passed=True)
    near_miss = Scored(episode("12 * 3?", (CALC, "36"), (WRONG, None)), 0.8, context, passed=False)
    assert build_pairs([[passed, near_miss]], min_margin=0.5, critic="v1")[0] == []
    pairs, _ = build_pairs([[near_miss, passed]], min_margin=0.5, critic="v1", pass_over_fail=True)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [(RIGHT, WRONG)]
    # two failures, or scores without a gold answer read, still need the margin
    worse_miss = Scored(episode("12 * 3?", (GUESS, "ok"), (WRONG, None)), 0.6, context, passed=False)
    unread = [Scored(passed.trajectory, 1.0, context), Scored(near_miss.trajectory, 0.8, context)]
    assert build_pairs([[near_miss, worse_miss], unread], min_margin=0.5, critic="v1", pass_over_fail=True)[0] == []


def test_two_queries_pair_only_where_their_searches_decided_it_with_queries_by_retrieval():
    def searched(query, answer):
        return episode("Who leads?", (action("search_memory", query=query), "[8ca0dbec] (0.9) Ada leads."),
                       (action("final_answer", answer=answer), None))

    def group(better_found, worse_found):
        good, bad = searched("who leads", "Ada"), searched("lead stadium", "Bob")
        return [Scored(good, 1.0, context, True, better_found), Scored(bad, 0.0, context, False, worse_found)]

    def pairs(groups):
        return build_pairs(groups, min_margin=0.5, critic="v1", queries_by_retrieval=True)

    made, why = pairs([group(True, False)])  # the better query found the answer, the worse did not: credited
    assert [json.loads(p["chosen"][0]["content"])["args"]["query"] for p in made] == ["who leads"]
    made, why = pairs([group(True, True), group(False, False)])  # the answer step decided: no query pair
    assert made == [] and why["search_undecided"] == 2
    assert len(build_pairs([group(True, True)], min_margin=0.5, critic="v1")[0]) == 1  # off: as before
    assert len(pairs([group(None, None)])[0]) == 1  # finds not looked for (no gold read): as before
    # a decision other than two queries is not affected
    calc = [Scored(episode("12 * 3?", (CALC, "36"), (RIGHT, None)), 1.0, context, True, False),
            Scored(episode("12 * 3?", (GUESS, "ok"), (WRONG, None)), 0.0, context, False, False)]
    assert len(pairs([calc])[0]) == 1


def test_the_decision_is_the_call_strop_ran_when_it_repaired_the_arguments():
    question = "Who did Britain exploit in India?"
    off_topic = episode(question, (action("search_memory", query="Bram Stoker (2013)"), "[a] Mughal"),
                        (action("final_answer", answer="the Mughal state", sources=[]), None))
    off_topic.messages[1]["tool_calls"] = [{"type": "function", "function": {
        "name": "search_memory", "arguments": json.dumps({"query": question})}}]  # strop searched the question
    own = episode(question, (action("search_memory", query="British Commonwealth"), "[b] trade"),
                  (action("final_answer", answer="Australia", sources=[]), None))
    pair = pair_episodes(Scored(off_topic, 1.0, context), Scored(own, 0.0, context), "v1")
    assert json.loads(pair["chosen"][0]["content"]) == {"tool": "search_memory", "args": {"query": question}}
    assert pair["rejected"][0]["content"] == action("search_memory", query="British Commonwealth")
    assert decisions(off_topic)[1].history[1]["content"] == action("search_memory", query="Bram Stoker (2013)")


def test_a_calculator_call_that_restates_a_number_is_never_chosen():
    copied = action("calculator", expression="46.0")  # right for "46 divided by 1" by accident
    computed = action("calculator", expression="46 / 1")
    answer = action("final_answer", answer="46", sources=[])
    lucky = episode("What is 46 divided by 1?", (copied, "46"), (answer, None))
    lost = Scored(episode("What is 46 divided by 1?", (computed, "46"), (GUESS, None)), 0.0, context)
    thought = Scored(episode("What is 46 divided by 1?", (GUESS, "ok"), (WRONG, None)), 0.0, context)
    pairs, why = build_pairs([[Scored(lucky, 1.0, context), lost, thought]], min_margin=0.5, critic="v1")
    assert pairs == [] and why["copied_number"] == 2
    # among equally good episodes the one that computed is the better one, so its pairs are kept
    worked = Scored(episode("What is 46 divided by 1?", (computed, "46"), (answer, None)), 1.0, context)
    lucky_id = "0" * 32  # sorts first by id: only the computation check puts it second
    lucky = Scored(replace(lucky, id=lucky_id), 1.0, context)
    pairs, why = build_pairs([[lucky, worked, thought]], min_margin=0.5, critic="v1")
    assert [p["chosen"][0]["content"] for p in pairs] == [computed] and why["copied_number"] == 0


def test_human_pairs_are_marked():
    pair = human_pair([{"role": "user", "content": "q"}], RIGHT, WRONG, note="thumbs down")
    assert pair["provenance"] == {"source": "human", "note": "thumbs down"}
    assert pair["id"] == human_pair([{"role": "user", "content": "q"}], RIGHT, WRONG)["id"]
