"""Exact paired statistics: the binomial tail, McNemar's p and the interval that agrees with it."""

import json
import random

import pytest

from strop.scenarios import report
from strop.scenarios.runs import EvalOptions, RunStore
from strop.scenarios.stats import binomial_tail, clopper_pearson, p_cell, p_text, paired, sign_p


def test_exact_tails_and_mcnemar_p_by_hand():
    assert binomial_tail(7, 8) == pytest.approx(9 / 256)  # P(X >= 7), X ~ Bin(8, 1/2)
    assert sign_p(7, 1) == pytest.approx(9 / 256)
    assert sign_p(7, 1, "two-sided") == pytest.approx(18 / 256)  # 0.07: not significant two-sided
    assert sign_p(1, 7, "less") == pytest.approx(9 / 256)
    assert sign_p(0, 0) == 1.0 and sign_p(3, 3, "two-sided") == 1.0
    with pytest.raises(ValueError):
        sign_p(1, 1, "sideways")


def test_p_values_read_as_people_write_them_never_as_zero():
    assert p_text(sign_p(13, 0, "two-sided")) == "p < 0.001"  # 0.00024 would print as 0.000
    assert p_text(0.0156) == "p = 0.016" and p_text(0.0005) == "p = 0.001"
    assert p_cell(0.0004) == "< 0.001" and p_cell(1.0) == "1.000"


def test_clopper_pearson_matches_known_values():
    low, high = clopper_pearson(7, 8)  # R: binom.test(7, 8)$conf.int = 0.4734903 0.9968403
    assert (low, high) == (pytest.approx(0.4734903, abs=1e-6), pytest.approx(0.9968403, abs=1e-6))
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0


@pytest.mark.parametrize("cases", [8, 20, 60])
def test_the_interval_excludes_zero_exactly_when_p_is_below_005(cases):
    for wins in range(cases + 1):
        for losses in range(cases + 1 - wins):
            test = paired(cases, wins, losses)
            assert test.low <= test.diff <= test.high
            assert (test.low > 0 or test.high < 0) == (test.p_two_sided < 0.05), (wins, losses)


def record(case, passed):
    return {"suite": "tools", "case": case, "repeat": 0, "passed": passed, "tags": [],
            "status": "passed" if passed else "failed", "grades": []}


def test_compare_reports_p_and_an_interval_that_agree_for_7_won_1_lost(tmp_path):
    """The bootstrap interval excluded 0 here although the exact test gives p = 0.07."""
    store = RunStore(tmp_path)
    before = [False] * 7 + [True] * 53
    after = [True] * 7 + [False] + [True] * 52
    a, b = (store.create(EvalOptions(), "m", {"tools": {}}) for _ in range(2))
    for run, outcomes in ((a, before), (b, after)):
        for i, passed in enumerate(outcomes):
            run.append(record(f"c{i}", passed))
    [c], _ = report.compare(a, b)
    assert (c.wins, c.losses, c.cases) == (7, 1, 60)
    assert c.p == pytest.approx(18 / 256)
    assert c.low < 0 < c.high
    assert "0.070" in report.comparison_markdown(a, b, [c], [])


def test_compare_sees_partial_credit_rise_where_no_case_passes_yet(tmp_path):
    """Failed calls that got more arguments right raise the grade (the graders' partial credit) with no case
    passing more: the sign test on the cases whose grade changed says so where McNemar's on passes cannot."""
    store = RunStore(tmp_path)
    a, b = (store.create(EvalOptions(), "m", {"tools": {}}) for _ in range(2))
    for i in range(12):
        for run, score in ((a, 0.0), (b, 0.6 if i < 9 else 0.0)):
            run.append(record(f"c{i}", False) | {"grades": [{"grader": "tool_call", "passed": False, "score": score}]})
    a.append(record("c12", True))
    b.append(record("c12", True))  # a pass is a grade of 1 whatever its graders scored
    [c], _ = report.compare(a, b)
    assert (c.wins, c.losses, c.p) == (0, 0, 1.0)
    assert (c.grade_up, c.grade_down) == (9, 0) and c.grade_p == pytest.approx(2 / 2**9)
    assert c.grade_a == pytest.approx(1 / 13) and c.grade_b == pytest.approx((9 * 0.6 + 1) / 13)
    assert "9/0 (0.004)" in report.comparison_markdown(a, b, [c], [])


def test_simulated_intervals_agree_with_p(tmp_path):
    rng = random.Random(3)
    for _ in range(50):
        n = rng.randint(5, 80)
        wins = rng.randint(0, n)
        test = paired(n, wins, rng.randint(0, n - wins))
        json.dumps(test.__dict__)  # plain numbers, for reports
        assert (test.low > 0) == (test.p_better < 0.025)
