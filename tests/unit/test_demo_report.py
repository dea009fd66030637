"""What `strop demo` tells a newcomer: one line on the outcome, and a few of the critic's pairs side by side."""

import json
import os

from strop.config import machine_text
from strop.demo import outcome_line, pair_examples, timing_line

SUITES = [{"suite": "tools", "diff": 0.1, "current": 0.15, "candidate": 0.25},
          {"suite": "rag", "diff": 0.0, "current": 0.4, "candidate": 0.4}]


def test_the_outcome_line_names_the_adapter_the_counts_p_and_the_best_suite():
    report = {"gate": {"wins": 9, "losses": 1, "p": 0.0107, "suites": SUITES}, "promote": {"promoted": "v1"}}
    assert outcome_line(report) == ("Promoted v1: it passes more held-out gate cases than the model before it, 9 won "
                                    "and 1 lost (one-sided exact p = 0.011); tools went from 15% to 25%.")


def test_the_outcome_line_says_why_nothing_was_promoted():
    refused = {"gate": {"reason": "pooled gain +1.0% is not significant"}, "promote": {"promoted": None}}
    assert outcome_line(refused) == "Nothing promoted, the model in use stays: pooled gain +1.0% is not significant."
    stopped = {"pairs": {"stop": "only 3 preference pairs"}, "gate": {"skipped": "only 3 preference pairs"},
               "promote": {"skipped": "only 3 preference pairs"}}
    assert outcome_line(stopped).endswith("only 3 preference pairs.")


def test_the_timing_line_gives_the_rounds_stages_their_minutes_from_the_checkpoints_and_names_the_machine(tmp_path):
    began = 1_000_000.0
    for name, minute in (("prompts.jsonl", 0), ("prompts.done", 0.5), ("rollouts.done", 5), ("train.done", 11),
                         ("gate.done", 14.25)):
        (tmp_path / name).write_text("{}")
        os.utime(tmp_path / name, (began + 60 * minute, began + 60 * minute))
    line = timing_line({"round": 3, "dir": str(tmp_path)}, 20.04 * 60)
    assert line == (f"The demo took 20.0 minutes on {machine_text()}: the round 13.7 (rollouts 4.5, train 6, "
                    "gate 3.2), the rest starting the server, the baseline and the test split.")


def pair(question, chosen, rejected):
    return {"prompt": [{"role": "user", "content": "an exemplar"}, {"role": "assistant", "content": "{}"},
                       {"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "provenance": {"chosen_score": 1.0, "rejected_score": 0.25}}


def test_pair_examples_show_the_question_and_one_pair_per_kind_of_chosen_action(tmp_path):
    calc = '{"tool":"calculator","args":{"expression":"2 | 3"}}'
    rows = [pair("What is 2 or 3?", calc, '{"tool":"think","args":{"thought":"hm"}}'),
            pair("What is 4 or 5?", calc.replace("2 | 3", "4 | 5"), '{"tool":"think","args":{"thought":"no"}}'),
            pair("Who leads Strop?", '{"tool":"search_memory","args":{"query":"lead"}}', "{}"),
            pair("Notes: ... Who leads?", "Ada.", "The printer."), pair("Notes: ... When?", "In March.", "Ada.")]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = pair_examples(path).splitlines()
    body = [line for line in table if line.startswith("| ") and "question" not in line]
    assert [line.split(" | ")[0] for line in body] == ["| What is 2 or 3?", "| Who leads Strop?",
                                                       "| Notes: ... Who leads?"]  # plain answers: one kind
    assert "2 \\| 3" in body[0] and "(1.00)" in body[0] and "(0.25)" in body[0]  # a pipe cannot break the table
    assert pair_examples(tmp_path / "none.jsonl") == ""


def test_the_demo_round_is_sized_and_gated_on_the_suites_asked_for():
    from strop.config import load_settings
    from strop.demo import sized

    settings = sized(load_settings(), 8, 4, 24, ["tools", "rag"])
    assert settings.improve.suites == ["tools", "rag"] and settings.improve.gate_limit == 24
    assert settings.improve.prompts_per_suite == 8 and settings.improve.samples == 4
    assert settings.improve.chat_prompts <= 8 and settings.improve.synthetic_prompts <= 8


def test_the_test_line_compares_the_promoted_adapter_with_the_model_before_it_case_by_case(tmp_path):
    from strop.demo import test_line, test_markdown
    from strop.scenarios.runs import EvalOptions, RunStore

    store = RunStore(tmp_path)

    def run(adapter, passed):
        made = store.create(EvalOptions(adapter=adapter, split="test"), "m", {"rag": {}, "tools": {}})
        for (suite, case), ok in passed.items():
            made.append({"suite": suite, "case": case, "repeat": 0, "passed": ok,
                         "status": "passed" if ok else "failed"})
        return made

    cases = [("rag", f"r{i}") for i in range(6)] + [("tools", f"t{i}") for i in range(4)]
    before = run(None, {c: c in (("rag", "r0"), ("tools", "t0")) for c in cases})
    after = run("v1", {c: c[0] == "rag" and c != ("rag", "r5") or c == ("tools", "t1") for c in cases})
    # rag: r1-r4 won, r0 kept; tools: t1 won, t0 lost -> 5 won, 1 lost of 10
    assert test_line(before, after) == ("On the test split, which no round selects on: 5 won and 1 lost of 10 cases "
                                        "(one-sided exact p = 0.109); rag went from 17% to 83%.")
    assert "## Test split" in test_markdown(before, after) and test_markdown(before, before) == ""


def test_the_test_line_names_partial_credit_that_rose_where_whole_passes_did_not(tmp_path):
    from strop.demo import test_line
    from strop.scenarios.runs import EvalOptions, RunStore

    store = RunStore(tmp_path)
    runs = []
    for adapter, score in ((None, 0.0), ("v1", 0.6)):
        made = store.create(EvalOptions(adapter=adapter, split="test"), "m", {"tools": {}})
        for i in range(8):  # no case passes; the calls of 7 get more arguments right
            made.append({"suite": "tools", "case": f"t{i}", "repeat": 0, "passed": False, "status": "failed",
                         "grades": [{"grader": "tool_call", "passed": False, "score": score if i < 7 else 0.0}]})
        runs.append(made)
    assert test_line(*runs).endswith("Partial credit rose on tools: graded higher on 7 cases, lower on 0 "
                                     "(two-sided exact p = 0.016), 0.00 to 0.53.")
    assert "Partial credit" not in test_line(runs[0], runs[0])
