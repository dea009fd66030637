"""Pairs at the answer step: the answer call asked again, graded by the case, a passing reply against a failing one."""

from strop.scenarios.graders import parse_expect
from strop.training.answers import answer_pairs

ASKED = [{"role": "system", "content": "Answer from the notes."}, {"role": "user", "content": "Notes: ... Who leads?"}]
ADA = parse_expect({"any_of": ["Ada"]})[0]


def line(prompt, trajectory, greedy, *samples):
    return {"prompt": prompt, "trajectory": trajectory, "messages": ASKED, "greedy": greedy, "samples": list(samples)}


def test_a_passing_reply_is_paired_with_a_failing_one_to_the_same_passages_once_per_prompt():
    lines = [line("p1", "t2", "Bob leads.", "Ada leads.", "Bob"),  # greedy failed, a sample passed
             line("p1", "t1", "Ada", "Bob", "Ada"),  # the same prompt, an earlier trajectory id: this one is used
             line("p2", "t3", "Ada", "Ada", "Ada"),  # every reply passed: no pair
             line("p3", "t4", "Bob", "Carl", "Bob")]  # every reply failed: no pair
    pairs = answer_pairs(lines, lambda prompt: ADA, "critic-1")
    assert [(p["prompt"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        (ASKED, "Ada", "Bob")]
    assert pairs[0]["provenance"]["source"] == "answer-samples" and pairs[0]["provenance"]["chosen_trajectory"] == "t1"
    sampled_better = answer_pairs(lines[:1], lambda prompt: ADA, "critic-1")[0]
    assert (sampled_better["chosen"][0]["content"], sampled_better["rejected"][0]["content"]) == ("Ada leads.",
                                                                                                   "Bob leads.")


def test_no_pair_where_the_gold_answer_may_not_be_read():
    assert answer_pairs([line("p1", "t1", "Bob", "Ada")], lambda prompt: None, "critic-1") == []
