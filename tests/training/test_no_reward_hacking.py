"""What the critic rewards is what was asked for: a search found an answer only where a passage it returned holds
one, and the pairs of a round do not depend on the order its episodes finished in."""

import json
import random

from strop.scenarios.graders import parse_expect
from strop.scenarios.suite import Case
from strop.training.critic import found_answer
from strop.training.pairs import Scored, build_pairs
from strop.trajectories import Trajectory

QUESTION = "Who founded the lab?"


def episode(found: str | None, answer: str) -> Trajectory:
    """A memory search that returned ``found`` (None: no search), then a final answer."""
    messages = [{"role": "user", "content": QUESTION}]
    if found is not None:
        messages.append({"role": "tool", "name": "search_memory", "content": found})
    final = {"name": "final_answer", "arguments": json.dumps({"answer": answer})}
    messages.append({"role": "assistant", "content": "", "tool_calls": [{"function": final}]})
    return Trajectory(prompt=QUESTION, messages=messages, status="answered", answer=answer)


HIT = "[0a1b2c3d] (0.71) The lab was founded by Ada in 1950."
OTHER = "[ffff0000] (0.40) Something else."


def test_a_search_found_the_answer_only_where_a_passage_it_returned_holds_one_the_graders_accept():
    case = Case("rag", "c1", QUESTION, parse_expect({"any_of": ["ada", "Ada Lovelace"]}))
    assert found_answer(case, episode(HIT, "Bob")) is True  # the answer written after it does not matter
    assert found_answer(case, episode(OTHER, "Ada")) is False  # the question and answer are not passages
    assert found_answer(case, episode(None, "Ada")) is False
    numeric = Case("math", "c2", "12 * 3?", parse_expect({"numeric": 36}))
    assert found_answer(numeric, episode(HIT, "36")) is None  # no text answer to look for


def step(text: str) -> dict:
    return {"role": "assistant", "content": text, "tool_calls": []}


def run(tid: str, answer: str) -> Trajectory:
    action = json.dumps({"tool": "final_answer", "args": {"answer": answer}})
    from strop.trajectories import StepTiming

    return Trajectory(prompt="q", messages=[{"role": "user", "content": "q"}, step(action)], status="answered",
                      id=tid, steps=[StepTiming("model", "m", 1.0)])


def test_the_best_of_a_tie_does_not_depend_on_the_order_episodes_finished_in():
    group = [Scored(run("t-b", "yes"), 1.0, list), Scored(run("t-a", "Yes!"), 1.0, list),
             Scored(run("t-c", "no"), 0.0, list)]
    made = set()
    for seed in range(6):
        shuffled = random.Random(seed).sample(group, len(group))
        pairs, _ = build_pairs([shuffled], 0.5, "v1")
        made.add(tuple(p["provenance"]["chosen_trajectory"] for p in pairs))
    assert made == {("t-a",)}
