"""Worked problems from the word-problem suite's generator (reasoning-gym's gsm_symbolic, installed by make setup)
become demonstrations: the one calculator call their steps make, then final_answer, in the agent's context; a
round adds new ones each time, none a gate or test question. No model is involved."""

import json

import pytest

from strop.agents.graph import ModelInput
from strop.scenarios.generators import SUFFIX, gsm_symbolic, worked_problems
from strop.scenarios.runner import Evaluator
from strop.scenarios.suite import load_suite
from strop.tools.calculator import evaluate
from strop.tools.toolkit import BUILTIN_TOOLS, final_answer
from strop.training.demonstrations import demonstration_pairs, worked_expression
from strop.training.sources import normal
from tests.training.test_no_leaks import improver, new_round

STUDENTS = ("There are 12 students playing basketball and twice that number playing volleyball. There are 17 boys "
            "and 17 girls playing table tennis.")
STEPS = ("There are 12 x 2 = 24 students playing volleyball.\nThere are 17 + 17 = 34 students playing table "
         "tennis.\nIn total there are 12 + 24 + 34 = 70 students.\n#### 70")


def test_a_worked_solution_becomes_one_expression_over_the_questions_numbers_or_none():
    assert worked_expression(STEPS, 70, STUDENTS) == "12 + (12*2) + (17 + 17)"
    assert worked_expression(STEPS, 71, STUDENTS) is None  # the steps miss the answer
    assert worked_expression(STEPS, 70, STUDENTS.replace("17 boys", "34 boys")) is None  # 34: a step and a given
    assert worked_expression("Pay 57 * 7 = 399 in all, and 399 - 60 = 339 after the fee.\n#### 339", 339,
                             "Pay 57 for each of 7 days, less a fee.") is None  # 60 is no number of the question
    rounded = ("Ben has 11*0.5=5 tubes of red paint\nBen has 13*3.0=39 tubes of yellow paint\n"
               "In all 5+39=44 tubes\n#### 44")  # 11 * 0.5 tubes are 5, not 5.5
    read = worked_expression(rounded, 44, "Ben has 11 boxes of 0.5 and 13 packs of 3.0.")
    assert read == "((11*0.5) // 1)+(13*3.0)"


def test_a_solution_may_use_the_numbers_a_question_writes_in_words_percentages_or_units():
    assert worked_expression("Ants: 30 * 0.5 = 15\nIn all 15 + 30 = 45\n#### 45", 45,
                             "There are half as many ants as bees, and 30 bees.") == "(30 * 0.5) + 30"
    assert worked_expression("Each day 77 * 3 = 231, so a week is 231 * 7 = 1617\n#### 1617", 1617,
                             "She serves three times 77 customers a day. How many a week?") == "(77 * 3) * 7"
    assert worked_expression("The rise is $1170 * 30% = $351\nLeft: $1170 - $351 = $819\n#### 819", 819,
                             "Shares worth $1,170 fall 30%.") == "1170 - (1170 * (30/100))"
    assert worked_expression("72 plants × £7 per plant = £504\n#### 504", 504,
                             "She buys 72 plants at £7 each.") == "72*7"
    assert worked_expression("Each day 77 * 3 = 231, so a week is 231 * 7 = 1617\n#### 1617", 1617,
                             "She serves 3 times 77 customers. How many in all?") is None  # no unit gives 7
    assert worked_expression("Bees: half * 150 ladybugs = 75 bees\nIn all 75 + 150 = 225\n#### 225", 225,
                             "There are half as many bees as ladybugs, and 150 ladybugs.") == "(0.5 * 150) + 150"
    assert worked_expression("Spotted: 210 + 140 = 350\nIn all: 975 + 425 = 1400\nMultiply by 100% to get a "
                             "percentage: 350 / 1400 * 100% = 25%\n#### 25", 25,
                             "Of 975 and 425 puppies, 210 and 140 have spots. What percentage have spots?",
                             ) == "(210 + 140) / (975 + 425) * 100"


def test_the_generator_writes_the_same_new_problems_of_every_template_each_time():
    found, templates = gsm_symbolic()
    assert len(templates) == 85 and set(templates) <= set(found)
    problems = list(worked_problems(0, 2))
    assert len(problems) == 170 and {p.template for p in problems} == set(templates)
    assert [p.question for p in problems] == [p.question for p in worked_problems(0, 2)]
    assert all(p.question.endswith(SUFFIX) and "####" in p.solution for p in problems)
    later = {p.question for p in worked_problems(2, 2)}
    assert not later & {p.question for p in problems}  # other seeds, other problems
    with pytest.raises(ValueError, match="1000 seeds"):
        next(worked_problems(999, 2))


def test_most_worked_problems_become_a_call_that_gives_their_answer_then_that_answer():
    problems = list(worked_problems(0, 4))
    shown = ModelInput([t for t in BUILTIN_TOOLS if t.name in ("think", "calculator")] + [final_answer])
    skipped = problems[0].question
    pairs, left_out = demonstration_pairs(problems + problems[1:2], shown, skip={skipped})
    assert len(pairs) == 2 * (len(problems) - left_out + 1) and len(pairs) >= 0.6 * 2 * len(problems)
    assert skipped not in {p["prompt"][-1]["content"] for p in pairs}
    by_question = {problem.question: problem for problem in problems}
    for call, answer in zip(pairs[::2], pairs[1::2], strict=True):
        problem = by_question[call["prompt"][-1]["content"]]
        action = json.loads(call["chosen"][0]["content"])
        assert action["tool"] == "calculator" and float(evaluate(action["args"]["expression"])) == float(problem.answer)
        assert call["prompt"][0]["role"] == "system" and answer["prompt"][:-2] == call["prompt"]  # then its result
        assert answer["prompt"][-1] == {"role": "tool", "content": str(evaluate(action["args"]["expression"]))}
        assert json.loads(answer["chosen"][0]["content"])["args"]["answer"] == problem.answer
        assert answer["rejected"] == call["chosen"]  # calling again instead of answering


def test_a_round_demonstrates_new_problems_each_time_none_held_out_and_none_without_gold(tmp_path):
    imp = improver(tmp_path, suites=["word_problems", "arithmetic"])  # arithmetic names no generator
    imp.settings.improve.demonstrations = 1
    evaluator = Evaluator(imp.settings, imp.endpoint, label="improve")
    rounds = [new_round(imp, number) for number in (1, 2)]
    for rnd in rounds:
        rnd.finish("prompts", {"solved": []})
    first, second = (imp.demonstrations(rnd, evaluator) for rnd in rounds)
    assert len(first) >= 100 and {p["provenance"]["source"] for p in first + second} == {"demonstration"}
    asked = [{p["prompt"][-1]["content"] for p in made[::2]} for made in (first, second)]
    assert not asked[0] & asked[1]  # new problems in the second round
    held_out = {normal(c.input) for c in load_suite("word_problems").cases if c.split in ("gate", "test")}
    assert not {normal(q) for q in asked[0] | asked[1]} & held_out
    solved = new_round(imp, 3)
    solved.finish("prompts", {"solved": ["word_problems"]})
    assert imp.demonstrations(solved, evaluator) == []  # a suite the policy solves draws nothing
    imp.settings.critic.use_gold = False
    assert imp.demonstrations(rounds[0], evaluator) == []
    imp.settings.critic.use_gold, imp.settings.improve.demonstrations = True, 0
    assert imp.demonstrations(rounds[0], evaluator) == []
