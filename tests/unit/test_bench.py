"""The benchmark clients themselves: the bare loop of bench/serve.py keeps going when the server closes idle
connections, and bench/hotswap.py's stream sends requests without a pause through a registry switch, each to
the adapter active when it is sent. A loopback StandInServer stands in for vLLM (the figures come from the
real server: see the README). bench/critic_unseen.py's suite holds no case of the built-in one."""

from __future__ import annotations

import importlib.util
import random
import time
from types import SimpleNamespace

import pytest

from strop.serving.adapters import Adapter, Registry
from tests.conftest import REPO


def bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def completion(body):
    time.sleep(0.005)
    return {"model": body["model"], "choices": [{"index": 0, "message": {"role": "assistant", "content": "red"},
                                                 "finish_reason": "length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": body["max_tokens"], "total_tokens": 13}}


def test_the_bare_client_reconnects_when_the_server_closed_its_connection(openai_server):
    serve = bench("serve")
    openai_server.route("POST", "/v1/chat/completions", completion)
    openai_server.hang_up = True  # every reply closes the connection, as an idle timeout does
    endpoint = SimpleNamespace(base_url=openai_server.url, model="m", api_key="k")
    call = serve.bare_client(endpoint, tokens=8)
    runs = [serve.timed(call) for _ in range(3)]
    assert [tokens for _, _, tokens in runs] == [8, 8, 8]
    assert all(cpu >= 0 and wall > 0 for cpu, wall, _ in runs)
    assert openai_server.bodies("/v1/chat/completions")[0]["ignore_eos"] is True


def test_paired_differences_get_an_interval_around_their_median():
    serve = bench("serve")
    low, high = serve.interval([0.9, 1.0, 1.1] * 50, random.Random(0))
    assert low <= 1.0 <= high and high - low < 0.2


def adapter(tmp_path, name: str) -> Adapter:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(f'{{"r": 8, "name": "{name}"}}')
    return Adapter(name, folder, {"name": name})


def test_the_stream_goes_on_through_the_registry_switch_to_the_new_adapter(tmp_path, openai_server):
    hotswap = bench("hotswap")
    openai_server.route("POST", "/v1/chat/completions", completion)
    endpoint = SimpleNamespace(base_url=openai_server.url, model="m", api_key="k")
    old, new = adapter(tmp_path, "bench-a"), adapter(tmp_path, "bench-b")
    registry = Registry(tmp_path / "registry")
    registry.root.mkdir()
    (registry.root / "bench-a").symlink_to(old.path)
    (registry.root / "bench-b").symlink_to(new.path)
    for a in (old, new):
        (a.path / "strop-adapter.json").write_text(f'{{"name": "{a.name}"}}')
    registry.set_active("bench-a", "promote", "start")
    with hotswap.Stream(endpoint, registry, {"bench-a": old, "bench-b": new}, workers=2) as stream:
        time.sleep(0.3)
        switching = time.perf_counter()
        registry.set_active("bench-b", "promote", "switch")
        switched = time.perf_counter()
        time.sleep(0.3)
    records = stream.records
    assert records and all(r["ok"] for r in records)
    after = [r for r in records if r["began"] >= switched]
    before = [r for r in records if r["ended"] <= switching]
    assert after and {r["adapter"] for r in after} == {"bench-b"}
    assert before and {r["adapter"] for r in before} == {"bench-a"}
    asked = {body["model"] for body in openai_server.bodies("/v1/chat/completions")}
    assert asked == {old.served_name, new.served_name}
    assert hotswap.overlapping(records, switched, switched + 0.001) == [
        r for r in records if r["began"] < switched + 0.001 and r["ended"] > switched]


@pytest.mark.parametrize(("name", "sample", "cases"), [
    ("rag", 200, 200), ("tools", 200, 80),  # tools: 200 lines, 120 in the suite
    ("arithmetic", 100, 370),  # four kinds of sums, 100 lines of each but division (100 lines, 30 in the suite)
])
def test_the_unseen_suite_holds_no_case_of_the_built_in_one(tmp_path, name, sample, cases):
    from strop.scenarios.suite import load_suite

    unseen = load_suite(bench("critic_unseen").unseen_suite(tmp_path, sample, name))
    suite = load_suite(name)
    assert len(unseen.cases) == cases and not {c.id for c in unseen.cases} & {c.id for c in suite.cases}
    assert unseen.name == suite.name and unseen.defaults == suite.defaults  # the same splits, tools and corpus
    assert {c.split for c in unseen.cases} == {"train", "gate", "test"}
    assert {tag for c in unseen.cases for tag in c.tags} == {tag for c in suite.cases for tag in c.tags}


def test_the_unseen_suite_leaves_out_cases_measured_before(tmp_path):
    from strop.scenarios.suite import load_suite

    critic_unseen = bench("critic_unseen")
    first = {c.id for c in load_suite(critic_unseen.unseen_suite(tmp_path / "a", 100)).cases}
    second = load_suite(critic_unseen.unseen_suite(tmp_path / "b", 100, measured=frozenset(first)))
    assert len(second.cases) == 100 and not first & {c.id for c in second.cases}


def test_the_replayed_search_is_the_episodes_first_query_or_else_the_question():
    retrieval = bench("retrieval")
    call = {"type": "function", "id": "c1", "function": {"name": "search_memory",
                                                          "arguments": '{"query": "Norman art churches"}'}}
    later = {"function": {"name": "search_memory", "arguments": '{"query": "second search"}'}}
    searched = SimpleNamespace(prompt="Q?", status="answered", messages=[
        {"role": "user", "content": "Q?"}, {"role": "assistant", "tool_calls": [call]},
        {"role": "assistant", "tool_calls": [later]}])
    assert retrieval.first_query(searched, "Q?") == "Norman art churches"
    calculated = SimpleNamespace(prompt="Q?", status="answered", messages=[{"role": "assistant", "tool_calls": [
        {"function": {"name": "calculator", "arguments": '{"expression": "1+1"}'}}]}])
    assert retrieval.first_query(calculated, "Q?") == "Q?"
