import json

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from strop.agents.graph import build_agent, exemplar_messages, load_exemplars, new_run
from tests.agents.conftest import ScriptedModel

CALC = '{"tool":"calculator","args":{"expression":"1234 * 5678"}}'
ANSWER = '{"tool":"final_answer","args":{"answer":"7006652","sources":[]}}'
THINK = '{"tool":"think","args":{"thought":"hmm"}}'


def run(model, tools, question="What is 1234 * 5678?", **options):
    graph = build_agent(model, tools, max_steps=options.pop("max_steps", 4), **options)
    return graph.invoke(new_run(question))


def test_calculator_then_answer(tools):
    state = run(ScriptedModel(replies=[CALC, ANSWER]), tools)
    assert state["status"] == "answered" and state["answer"] == "7006652"
    human, call, result, final = state["messages"]
    assert isinstance(human, HumanMessage)
    assert call.content == CALC and call.tool_calls[0]["args"] == {"expression": "1234 * 5678"}
    assert isinstance(result, ToolMessage) and result.content == "7006652" and result.name == "calculator"
    assert final.content == ANSWER and final.tool_calls[0]["name"] == "final_answer"
    assert [t["kind"] for t in state["timings"]] == ["model", "tool", "model", "tool"]
    assert state["timings"][0]["completion_tokens"] == 10


def test_every_action_is_constrained_and_the_first_cannot_answer(tools):
    model = ScriptedModel(replies=[CALC, ANSWER])
    run(model, tools)
    first, second = (call["extra_body"]["response_format"]["json_schema"]["schema"] for call in model.calls)
    names = lambda schema: {alt["properties"]["tool"]["const"] for alt in schema["anyOf"]}  # noqa: E731
    assert "final_answer" not in names(first) and "calculator" in names(first)
    assert names(second) == {t.name for t in tools}
    assert all(call["max_tokens"] == 256 for call in model.calls)


def test_malformed_action_becomes_an_error_the_model_sees(tools):
    model = ScriptedModel(replies=['{"tool":"calculator","args":{"expr', CALC, ANSWER])
    state = run(model, tools)
    bad, error = state["messages"][1:3]
    assert bad.invalid_tool_calls and not bad.tool_calls
    assert error.status == "error" and "not valid JSON" in error.content
    assert state["status"] == "answered"
    assert error.content in [m.content for m in model.calls[1]["messages"]]


def test_unknown_tool_lists_the_known_ones(tools):
    state = run(ScriptedModel(replies=['{"tool":"bash","args":{"cmd":"ls"}}', ANSWER]), tools)
    assert "known tools" in state["messages"][2].content and "calculator" in state["messages"][2].content


def test_tool_error_is_a_result_not_a_crash(tools):
    state = run(ScriptedModel(replies=['{"tool":"calculator","args":{"expression":"1 / 0"}}', ANSWER]), tools)
    result = state["messages"][2]
    assert result.status == "error" and "division by zero" in result.content
    assert state["timings"][1]["error"]
    assert state["status"] == "answered"


def test_step_budget_ends_gracefully(tools):
    state = run(ScriptedModel(replies=[THINK]), tools, max_steps=3)
    assert state["status"] == "budget_exhausted" and state["answer"] is None
    assert state["steps"] == 3
    assert isinstance(state["messages"][-1], AIMessage) and "3 steps" in state["messages"][-1].content


def test_model_failure_is_recorded_not_raised(tools):
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    state = run(ScriptedModel(replies=[openai.APIConnectionError(request=request)]), tools)
    assert state["status"] == "error"
    assert "APIConnectionError" in state["errors"][0]


def test_final_answer_is_required(tools):
    with pytest.raises(ValueError, match="final_answer"):
        build_agent(ScriptedModel(replies=[ANSWER]), tools[:-1])


def test_the_most_similar_exemplar_comes_last(tools):
    episodes = load_exemplars(tools)
    assert {s["action"]["tool"] for e in episodes for s in e["steps"]} <= {t.name for t in tools}
    last = lambda q: [m for m in exemplar_messages(episodes, q) if isinstance(m, HumanMessage)][-1]  # noqa: E731
    assert "minus" in last("What is 914 minus 186?").content
    assert "capital" in last("What is the capital of France?").content


def test_exemplar_actions_are_valid_actions_of_their_tools(tools):
    for message in exemplar_messages(load_exemplars(tools)):
        if isinstance(message, AIMessage):
            action = json.loads(message.content)
            tool = next(t for t in tools if t.name == action["tool"])
            tool.run(action["args"])  # raises if an exemplar drifted from the tool's schema
