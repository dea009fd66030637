"""Loading suites: inline cases, cases from JSONL through a mapping, and errors that say file, line and field."""

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strop.errors import StropError
from strop.scenarios.graders import Numeric, ToolCall
from strop.scenarios.suite import builtin_suites, load_suite

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def write(tmp_path, text, name="suite.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_inline_cases_take_defaults_and_tags(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: mini
        threshold: 0.5
        defaults: {tools: [calculator], max_steps: 3, tags: [math]}
        cases:
          - {id: a, input: "What is 2 + 2?", expect: {numeric: 4}, tags: [add]}
          - input: "What is 3 * 3?"
            expect: {numeric: 9, regex: '^\\d+$'}
    """))
    assert suite.name == "mini" and not suite.problems
    first, second = suite.cases
    assert (first.id, first.tags, first.split) == ("a", ("math", "add"), "gate")
    assert second.id == "2" and len(second.graders) == 2
    assert isinstance(first.graders[0], Numeric) and first.graders[0].value == 4
    assert suite.defaults.max_steps == 3 and suite.spec.threshold == 0.5


def test_data_cases_come_from_jsonl_through_the_mapping(tmp_path):
    rows = [{"qid": f"q{i}", "q": f"What is {i} + 1?", "a": str(i + 1), "kind": "add" if i % 2 else "sub"}
            for i in range(10)]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    suite = load_suite(write(tmp_path, """
        data:
          - {path: rows.jsonl, id: "{qid}", input: "Q: {q}", expect: {numeric: "{a}"}, tags: ["{kind}"],
             match: {kind: add}}
    """))
    assert [c.id for c in suite.cases] == ["q1", "q3", "q5", "q7", "q9"]
    assert suite.cases[0].input == "Q: What is 1 + 1?" and suite.cases[0].tags == ("add",)
    assert suite.cases[0].graders[0].value == 2


def test_a_whole_field_template_keeps_its_type(tmp_path):
    row = {"id": "t1", "question": [[{"role": "user", "content": "Hypotenuse of 4 and 5?"}]],
           "function": [{"name": "math.hypot", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}},
                                                               "required": ["x"]}}],
           "ground_truth": [{"math.hypot": {"x": [4]}}]}
    (tmp_path / "bfcl.jsonl").write_text(json.dumps(row) + "\n")
    suite = load_suite(write(tmp_path, """
        data:
          - {path: bfcl.jsonl, id: "{id}", input: "{question[0][0][content]}", functions: "{function}",
             expect: {tool_call: "{ground_truth}"}}
    """))
    [case] = suite.cases
    assert case.input == "Hypotenuse of 4 and 5?"
    assert case.functions[0]["name"] == "math.hypot"
    assert isinstance(case.graders[0], ToolCall) and case.graders[0].args == {"x": [4]}


def test_bad_lines_are_skipped_with_file_line_and_field(tmp_path):
    lines = ['{"q": "What is 1 + 1?", "a": "2"}', "{not json", '{"q": "What is 2 + 2?"}', "[1, 2]",
             '{"q": "What is 3 + 3?", "a": "six"}', '{"q": "What is 4 + 4?", "a": "8"}']
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    suite = load_suite(write(tmp_path, """
        data:
          - {path: rows.jsonl, input: "{q}", expect: {numeric: "{a}"}}
    """))
    assert [c.input for c in suite.cases] == ["What is 1 + 1?", "What is 4 + 4?"]
    problems = {p.line: str(p) for p in suite.problems}
    assert set(problems) == {2, 3, 4, 5}
    assert "rows.jsonl:2" in problems[2] and "Not valid JSON" in problems[2]
    assert "field 'a' is absent" in problems[3] and "fields: q" in problems[3]
    assert "not a JSON object" in problems[4]
    assert "expect.numeric" in problems[5] and "not a number" in problems[5]


def test_bad_inline_cases_are_skipped_with_their_line(tmp_path):
    suite = load_suite(write(tmp_path, """
        cases:
          - {id: good, input: "1 + 1?", expect: {numeric: 2}}
          - id: typo
            input: "2 + 2?"
            expect: {numerik: 4}
          - {id: empty, input: "", expect: {numeric: 1}}
          - {id: good, input: "again?", expect: {numeric: 1}}
    """))
    assert [c.id for c in suite.cases] == ["good"]
    problems = {p.line: str(p) for p in suite.problems}
    assert "unknown grader 'numerik'" in problems[6] and "case 2" in problems[6]
    assert "field input" in problems[7]
    assert "used twice" in problems[8]


def test_a_missing_data_file_skips_only_its_cases(tmp_path):
    suite = load_suite(write(tmp_path, """
        cases:
          - {input: "1 + 1?", expect: {numeric: 2}}
        data:
          - {path: nowhere.jsonl, input: "{q}", expect: {numeric: "{a}"}}
    """))
    assert len(suite.cases) == 1
    [problem] = suite.problems
    assert problem.line == 5 and "nowhere.jsonl not found" in str(problem)


@pytest.mark.parametrize(("text", "words"), [
    ("cases: [\n  {input: 'a', expect: {numeric: 1}\n", "not valid YAML"),
    ("- just\n- a list\n", "a suite must be a mapping"),
    ("threshold: 2\ncases:\n  - {input: a, expect: {numeric: 1}}\n", "suite.yaml:1: field threshold"),
    ("name: x\ndefaults:\n  tools: [calculator, hammer]\ncases: []\n", "suite.yaml:3: field defaults.tools.1"),
    ("name: x\ncolour: red\ncases: []\n", "suite.yaml:2: field colour: Extra inputs"),
    ("name: x\ngenerator: gsm8k\ncases: []\n", "suite.yaml:2: field generator: Input should be 'gsm_symbolic'"),
    ("name: x\n", "has no `cases:` and no `data:`"),
])
def test_a_broken_suite_raises_with_file_line_and_field(tmp_path, text, words):
    with pytest.raises(StropError) as info:
        load_suite(write(tmp_path, text))
    assert words in str(info.value)
    assert str(tmp_path / "suite.yaml") in str(info.value)


def test_unknown_suite_names_the_builtin_ones():
    with pytest.raises(StropError) as info:
        load_suite("no-such-suite")
    assert "smoke" in info.value.fix


def test_splits_are_stable_and_follow_the_train_fraction(tmp_path):
    cases = "\n".join(f"  - {{id: c{i}, input: q{i}, expect: {{numeric: {i}}}}}" for i in range(400))
    path = write(tmp_path, f"name: splits\ntrain_fraction: 0.25\ncases:\n{cases}\n")
    first, again = load_suite(path), load_suite(path)
    assert [c.split for c in first.cases] == [c.split for c in again.cases]
    train = len(first.select("train"))
    assert 60 < train < 140
    assert len(first.select("gate")) + train == 400 == len(first.select("all"))
    assert len(first.select("gate", limit=7)) == 7


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside the repository")
@pytest.mark.parametrize("name", builtin_suites())
def test_builtin_suites_load_cleanly(name):
    suite = load_suite(name)
    assert suite.cases and not suite.problems, [str(p) for p in suite.problems]
    assert suite.select("gate")


# -- fuzz: no malformed suite lets a traceback escape -------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, width=16),
                    st.text(max_size=8), st.sampled_from(["{q}", "{a}", "{missing}", "{q[0]}", "{", "rows.jsonl"]))
keys = st.sampled_from(["name", "threshold", "defaults", "cases", "data", "input", "expect", "id", "tags", "path",
                        "numeric", "exact", "tool_call", "judge", "regex", "tools", "max_steps", "memory", "sample",
                        "match", "functions", "split", "timeout_s", "train_fraction", "sampling", "bogus"])
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=5)), max_leaves=25)


def _malformed_texts():
    structured = st.dictionaries(keys, values, max_size=6).map(lambda d: yaml.safe_dump(d, allow_unicode=True))
    garbled = st.tuples(structured, st.integers(0, 200), st.sampled_from(["{", "]", ":", "\t", "- ", "'", "&a", "*b",
                                                                         "!!python/object:os.system", "\n  x"]))
    return st.one_of(structured, garbled.map(lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:]), st.text(max_size=80))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_malformed_texts())
def test_fuzzed_suites_load_or_fail_with_a_clear_error(tmp_path, text):
    (tmp_path / "rows.jsonl").write_text('{"q": "What is 1 + 1?", "a": "2"}\n{"q": 3}\n')
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    try:
        suite = load_suite(path)
    except StropError as exc:
        assert str(path) in str(exc)
        return
    for problem in suite.problems:
        assert problem.path and problem.fix
