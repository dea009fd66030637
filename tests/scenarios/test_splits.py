"""The held-out test split, and suite files that must not hang loading."""

import time

import pytest

from strop.errors import StropError
from strop.scenarios.suite import load_suite


def suite_file(tmp_path, test_fraction=None, cases=400):
    lines = ["name: many", "train_fraction: 0.5"]
    if test_fraction is not None:
        lines.append(f"test_fraction: {test_fraction}")
    lines.append("cases:")
    lines += [f"  - {{id: c{i}, input: 'What is {i} + 1?', expect: {{numeric: {i + 1}}}}}" for i in range(cases)]
    path = tmp_path / f"many-{test_fraction}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def splits(path):
    return {c.id: c.split for c in load_suite(path).cases}


def test_a_test_split_takes_only_gate_cases_and_keeps_every_train_case(tmp_path):
    before, after = splits(suite_file(tmp_path)), splits(suite_file(tmp_path, 0.2))
    assert set(before.values()) == {"train", "gate"}
    assert {c for c, s in after.items() if s == "train"} == {c for c, s in before.items() if s == "train"}
    moved = {c for c, s in after.items() if s == "test"}
    assert moved and all(before[c] == "gate" for c in moved)
    assert 0.12 < len(moved) / len(after) < 0.28  # about test_fraction of all cases
    assert splits(suite_file(tmp_path, 0.2)) == after  # stable


def data_suite(tmp_path, train_sample=0):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(f'{{"id": "r{i}", "q": "What is {i} + 1?", "a": {i + 1}}}\n' for i in range(400)))
    path = tmp_path / f"data-{train_sample}.yaml"
    path.write_text("name: rows\ntrain_fraction: 0.5\ntest_fraction: 0.2\ndata:\n"
                    f"  - {{path: rows.jsonl, id: '{{id}}', input: '{{q}}', expect: {{numeric: '{{a}}'}}, sample: 60, "
                    f"train_sample: {train_sample}}}\n")
    return splits(path)


def test_more_train_lines_leave_the_sampled_gate_and_test_cases_as_they_were(tmp_path):
    sampled, more = data_suite(tmp_path), data_suite(tmp_path, train_sample=50)
    evaluated = {c: s for c, s in sampled.items() if s != "train"}
    assert evaluated and {c: s for c, s in more.items() if s != "train"} == evaluated
    added = set(more) - set(sampled)
    assert set(sampled) < set(more) and len(added) == 50 and all(more[c] == "train" for c in added)
    everything = data_suite(tmp_path, train_sample=1000)  # more than the file holds: every train-hashed line
    assert 160 < sum(s == "train" for s in everything.values()) < 240


def test_the_fractions_leave_room_for_a_gate(tmp_path):
    with pytest.raises(StropError, match="test_fraction"):
        load_suite(suite_file(tmp_path, 0.5, cases=2))


def test_a_test_split_no_round_reads(tmp_path):
    from strop.config import load_settings
    from strop.serving.endpoint import Endpoint
    from strop.training.gate import Gate
    from strop.training.sources import PromptSources, normal

    path = suite_file(tmp_path, 0.2)
    settings = load_settings(state_dir=tmp_path).model_copy(deep=True)
    settings.improve.suites = [str(path)]
    suite = load_suite(path)
    gate = Gate(settings, Endpoint("http://x/v1", "m", "k", managed=False), [suite])
    test = {c.id for c in suite.select("test")}
    assert test and not test & {c.id for c in gate.cases[suite.name]}
    sources = PromptSources(settings, None, None)
    assert {normal(c.input) for c in suite.select("test")} <= sources.evaluation_inputs  # never a prompt
    for name in ("arithmetic", "tools", "rag", "word_problems"):  # the built-in suites that train hold some out
        assert load_suite(name).spec.test_fraction > 0


def test_nested_yaml_aliases_are_refused_within_a_second(tmp_path):
    rows = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        rows.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    rows.append("cases: *i")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(rows) + "\n")
    assert path.stat().st_size < 500
    began = time.perf_counter()
    with pytest.raises(StropError, match="aliases"):
        load_suite(path)
    assert time.perf_counter() - began < 1.0


def test_ordinary_anchors_still_load(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("defaults: &d {max_steps: 3}\ncases:\n  - {id: a, input: 'What is 1 + 1?', expect: {numeric: 2}}\n")
    assert [c.id for c in load_suite(path).cases] == ["a"]
