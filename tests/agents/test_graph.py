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


# -- memory questions: search first, answer from the passages, sources filled by strop ----------------------

NOTE = "The lead of project Strop is Ada Okafor. It ships on 14 March."
OTHER = "The printer stands in room Birch."


def memory_tools(passages=(("8ca0dbec", NOTE), ("e99dfe53", OTHER)), relevance=0.8):
    """search_memory over fixed passages (standing in for Qdrant), with the relevance the graph routes on."""
    from dataclasses import replace
    from typing import Annotated

    from pydantic import Field

    from strop.tools.base import tool
    from strop.tools.builtin import BUILTIN_TOOLS
    from strop.tools.toolkit import MAX_QUERY, final_answer

    queries = []

    @tool
    def search_memory(query: Annotated[str, Field(min_length=2, max_length=MAX_QUERY)]) -> str:
        """Search the memory.

        Args:
            query: what to look for.
        """
        queries.append(query)
        return "\n".join(f"[{i}] (0.03) {text}" for i, text in passages) or "No passages found."

    search = replace(search_memory, relevance=lambda question: relevance)
    return [*BUILTIN_TOOLS, search, final_answer], queries


def schema_tools(call):
    schema = call["extra_body"]["response_format"]["json_schema"]["schema"]
    return {alt["properties"]["tool"]["const"] for alt in schema["anyOf"]}


QUESTION = "Who is the lead of the Strop project?"


def test_a_question_the_memory_knows_is_searched_first_and_answered_from_the_passages():
    tools, queries = memory_tools()
    model = ScriptedModel(replies=['{"tool":"search_memory","args":{"query":"lead of Strop"}}',
                                   "Ada Okafor is the lead."])
    state = run(model, tools, QUESTION)
    assert schema_tools(model.calls[0]) == {"search_memory"}
    assert queries == ["lead of Strop"]
    answer_call = model.calls[1]
    assert "response_format" not in (answer_call.get("extra_body") or {})  # a plain answer, not an action
    assert answer_call["temperature"] == 0.0  # greedy even in sampled rollouts: the search decides the outcome
    asked = answer_call["messages"][-1].content
    assert "The lead of project Strop is Ada Okafor." in asked and QUESTION in asked
    assert state["status"] == "answered"
    final = state["messages"][-1].tool_calls[0]
    assert final["args"] == {"answer": "Ada Okafor is the lead.", "sources": ["8ca0dbec"]}
    assert state["answer"] == "Ada Okafor is the lead. [8ca0dbec]"


def test_a_grounded_answer_missing_the_name_the_best_sentence_holds_is_that_sentence():
    tools, _ = memory_tools()
    model = ScriptedModel(replies=['{"tool":"search_memory","args":{"query":"lead of Strop"}}',
                                   "The printer stands in room Birch."])
    state = run(model, tools, QUESTION)
    final = state["messages"][-1].tool_calls[0]
    assert final["args"] == {"answer": "The lead of project Strop is Ada Okafor.", "sources": ["8ca0dbec"]}


def test_a_grounded_answer_keeps_the_call_it_was_made_by_for_training():
    from langchain_core.messages import convert_to_openai_messages

    tools, _ = memory_tools()
    model = ScriptedModel(replies=['{"tool":"search_memory","args":{"query":"lead of Strop"}}',
                                   "The printer stands in room Birch."])
    state = run(model, tools, QUESTION)
    asked = convert_to_openai_messages(model.calls[1]["messages"])
    read = [{"role": m["role"], "content": m["content"]} for m in asked]
    # strop rewrote the answer; what the model read and said stays, for the pair of that step
    assert state["answered_from"] == {"prompt": read, "reply": "The printer stands in room Birch."}
    assert "Ada Okafor" in state["messages"][-1].tool_calls[0]["args"]["answer"]


def test_an_answer_without_a_model_call_has_nothing_to_train():
    tools, _ = memory_tools(passages=(), relevance=0.0)
    model = ScriptedModel(replies=['{"tool":"search_memory","args":{"query":"lab door code"}}'])
    assert run(model, tools, "What is my door code?")["answered_from"] is None


def test_a_question_far_from_the_memory_is_left_to_the_model():
    tools, queries = memory_tools(relevance=0.1)
    model = ScriptedModel(replies=[THINK, '{"tool":"final_answer","args":{"answer":"Paris","sources":[]}}'])
    state = run(model, tools, "What is the capital of France?")
    assert "search_memory" in schema_tools(model.calls[0]) and "think" in schema_tools(model.calls[0])
    assert queries == [] and state["answer"] == "Paris"


def test_a_question_in_another_language_about_a_name_the_memory_holds_is_searched_first():
    tools, queries = memory_tools(relevance=0.1)  # the English embedding misses the German question
    model = ScriptedModel(replies=['{"tool":"search_memory","args":{"query":"Projekt Strop"}}', "Ada Okafor"])
    state = run(model, tools, "Wer leitet das Projekt Strop?")
    assert schema_tools(model.calls[0]) == {"search_memory"}
    assert queries == ["Projekt Strop", "Projekt Strop"]  # the probe for its names, then the model's search
    assert state["answer"].startswith(NOTE)  # not English: the sentences read, not the model's words


def test_a_name_the_memory_does_not_hold_leaves_the_question_to_the_model():
    tools, queries = memory_tools(passages=(("e99dfe53", OTHER),), relevance=0.1)
    model = ScriptedModel(replies=[THINK, '{"tool":"final_answer","args":{"answer":"Oslo","sources":[]}}'])
    run(model, tools, "Wo wohnt Halvorsen?")
    assert "think" in schema_tools(model.calls[0]) and queries == ["Halvorsen"]


def test_a_question_about_the_users_own_things_is_searched_even_in_an_empty_memory():
    tools, queries = memory_tools(passages=(), relevance=0.0)
    model = ScriptedModel(replies=['{"tool":"search_memory","args":{"query":"lab door code"}}'])
    state = run(model, tools, "What is my door code?")
    assert schema_tools(model.calls[0]) == {"search_memory"}
    assert state["answer"] == "I could not find that in memory." and len(model.calls) == 1


def test_a_degenerate_query_searches_with_the_question():
    tools, queries = memory_tools()
    looping = "lead lead of the the project of the project of the project of the project"
    model = ScriptedModel(replies=[json.dumps({"tool": "search_memory", "args": {"query": looping}}), "Ada Okafor"])
    run(model, tools, QUESTION)
    assert queries == [QUESTION]


def test_an_empty_memory_answers_that_nothing_was_found():
    tools, _ = memory_tools(passages=())
    model = ScriptedModel(replies=['{"tool":"search_memory","args":{"query":"lead of Strop"}}'])
    state = run(model, tools, QUESTION)
    assert state["status"] == "answered" and state["answer"] == "I could not find that in memory."
    assert len(model.calls) == 1  # no model call to answer from nothing


def test_sources_come_from_the_passages_not_from_the_ids_the_model_wrote():
    tools, _ = memory_tools(relevance=0.1)
    model = ScriptedModel(replies=['{"tool":"search_memory","args":{"query":"printer room"}}',
                                   '{"tool":"final_answer","args":{"answer":"Birch","sources":["5f1c9a2e"]}}'])
    state = run(model, tools, "Where is the printer?")
    assert state["messages"][-1].tool_calls[0]["args"]["sources"] == ["e99dfe53"]
    assert state["answer"] == "Birch [e99dfe53]"


def test_markup_in_passages_is_not_shown_to_the_answer_call():
    tools, _ = memory_tools(passages=(("8ca0dbec", "<p>The <b>lead</b> is Ada Okafor.</p>"),))
    model = ScriptedModel(replies=['{"tool":"search_memory","args":{"query":"lead"}}', "Ada Okafor"])
    state = run(model, tools, QUESTION)
    assert "The lead is Ada Okafor." in model.calls[1]["messages"][-1].content
    assert "<b>" not in model.calls[1]["messages"][-1].content
    assert state["answer"] == "Ada Okafor [8ca0dbec]"


def test_the_spans_answer_is_constrained_to_spans_of_the_passages():
    tools, _ = memory_tools()
    model = ScriptedModel(replies=['{"tool":"search_memory","args":{"query":"lead"}}', '{"answer":"Ada Okafor"}'])
    state = run(model, tools, QUESTION, memory_answer="spans")
    schema = model.calls[1]["extra_body"]["response_format"]["json_schema"]["schema"]
    assert "Ada Okafor" in schema["properties"]["answer"]["enum"]
    assert state["messages"][-1].tool_calls[0]["args"]["answer"] == "Ada Okafor"


# -- loops -----------------------------------------------------------------------------------------------

def test_a_looping_argument_is_cut_where_it_repeats(tools):
    looping = "Multiply the numbers. Then add one. Then add one. Then add one. Then add one."
    model = ScriptedModel(replies=[json.dumps({"tool": "think", "args": {"thought": looping}}), CALC, ANSWER])
    state = run(model, tools)
    assert state["messages"][1].tool_calls[0]["args"]["thought"] == "Multiply the numbers. Then add one."
    assert state["messages"][1].content == json.dumps({"tool": "think", "args": {"thought": looping}})


def test_a_looping_answer_is_cut(tools):
    looping = "The answer is 12. The answer is 12. The answer is 12. The answer is 12."
    model = ScriptedModel(replies=[CALC, json.dumps({"tool": "final_answer", "args": {"answer": looping}})])
    state = run(model, tools)
    assert state["answer"] == "The answer is 12."


def test_a_repeated_action_is_not_run_again_and_the_model_must_answer(tools):
    model = ScriptedModel(replies=[CALC, CALC, ANSWER])
    state = run(model, tools, max_steps=6)
    repeated = state["messages"][4]
    assert repeated.status == "error" and "already taken" in repeated.content
    assert schema_tools(model.calls[2]) == {"final_answer"}
    assert state["status"] == "answered" and len(model.calls) == 3


def test_every_free_text_argument_is_bounded():
    from strop.config import load_settings
    from strop.tools.base import action_schema
    from strop.tools.toolkit import LazyMemory, standard_tools

    settings = load_settings()
    schema = action_schema(standard_tools(settings, LazyMemory(settings)))
    bounds = {alt["properties"]["tool"]["const"]: {name: _bound(spec) for name, spec in
                                                   alt["properties"]["args"]["properties"].items()
                                                   if spec.get("type") == "string"} for alt in schema["anyOf"]}
    assert bounds["search_memory"]["query"] == 200
    assert bounds["final_answer"]["answer"] == 300
    assert bounds["think"]["thought"] <= 300
    assert all(limit is not None and limit <= 500 for args in bounds.values() for limit in args.values())


def _bound(spec):
    """A string's longest length: maxLength, or the bound of a whole-string pattern like ^[...]{1,300}$."""
    import re

    bounded = re.search(r"\{\d+,(\d+)\}\$$", spec.get("pattern", ""))
    return spec.get("maxLength") or (int(bounded[1]) if bounded else None)


def test_a_search_that_finds_nothing_ends_with_not_found_even_when_the_model_chose_it():
    tools, _ = memory_tools(passages=(), relevance=0.0)
    model = ScriptedModel(replies=['{"tool":"search_memory","args":{"query":"door code"}}'])
    state = run(model, tools, "What is the door code of the lab?")
    assert state["answer"] == "I could not find that in memory." and len(model.calls) == 1
