import json
from dataclasses import replace

import pytest

from strop.config import load_settings
from strop.errors import StropError
from strop.serving.endpoint import Endpoint, refreshed
from strop.serving.server import ServerRecord, VLLMServer
from strop.tui.commands import SlashSuggester, complete_path, parse
from strop.tui.feedback import ChatFeedback, better_action
from strop.tui.history import past_turns, thread_markdown
from strop.tui.partial import partial_answer, partial_tool
from strop.tui.passages import parse_passages
from strop.tui.session import ChatSession
from strop.tui.threads import ThreadBook, thread_name
from strop.tui.turns import thread_config
from tests.tui.conftest import ANSWER, CALC, StandIn


def test_partial_answer_streams_the_answer_string_as_it_grows():
    action = '{"tool":"final_answer","args":{"answer":"Line one\\nthe \\"best\\" caf\\u00e9'
    assert partial_tool(action) == "final_answer"
    assert partial_answer(action) == 'Line one\nthe "best" café'
    assert partial_answer(action[:-3]) == 'Line one\nthe "best" caf'  # an escape cut in half waits
    assert partial_answer('{"tool":"final_answer","args":{"answer":"391","sources":[]}}') == "391"
    assert partial_answer('{"tool":"final_ans') is None
    assert partial_answer(CALC) is None and partial_tool(CALC) == "calculator"


def test_passages_are_read_from_the_search_result_text():
    passages = parse_passages("[abcd1234] (0.83) Paris is the capital.\n[ef567890] (-0.10) Other.")
    assert [(p.id, p.score, p.text) for p in passages] == [("abcd1234", 0.83, "Paris is the capital."),
                                                            ("ef567890", -0.1, "Other.")]
    assert parse_passages("No passages found.") == []


def test_thread_book_keeps_names_and_recency(tmp_path):
    book = ThreadBook(tmp_path / "threads.sqlite")
    book.ensure("a", "first")
    book.ensure("b", "second")
    assert [t.id for t in book.list()] == ["b", "a"]
    book.ensure("a", "ignored: already listed")
    assert [(t.id, t.name) for t in book.list()] == [("a", "first"), ("b", "second")]
    book.rename("b", "renamed")
    book.remove("a")
    assert [(t.id, t.name) for t in ThreadBook(tmp_path / "threads.sqlite").list()] == [("b", "renamed")]
    assert thread_name("What   is the capital of a country that is very far away from here?") == \
        "What is the capital of a country that…"


def _agent_and_trajectory(settings, replies):
    agent = StandIn(replies)(settings, lambda _m: None).make_agent(None)
    return agent, agent.run("What is 17 * 23?", thread_id="t1")


def test_feedback_with_a_better_answer_writes_a_human_pair(settings):
    agent, trajectory = _agent_and_trajectory(settings, [CALC, ANSWER])
    log = ChatFeedback(settings.feedback_dir)
    pair = log.prefer(agent.context, trajectory, "The answer is 391.")
    stored = json.loads(log.log.pairs_path.read_text())
    assert stored == pair and stored["provenance"]["source"] == "human"
    assert stored["chosen"][0]["content"] == better_action("The answer is 391.")
    assert json.loads(stored["chosen"][0]["content"])["args"] == {"answer": "The answer is 391.", "sources": []}
    assert stored["rejected"][0]["content"] == ANSWER
    assert stored["prompt"][0]["role"] == "system" and stored["prompt"][-1]["role"] == "tool"
    assert json.loads(log.log.ratings_path.read_text())["rating"] == -1


def test_feedback_on_an_answer_made_from_passages_teaches_that_plain_call(settings):
    agent, trajectory = _agent_and_trajectory(settings, [CALC, ANSWER])
    asked = [{"role": "system", "content": "Answer from the notes."}, {"role": "user", "content": "Notes: ..."}]
    trajectory.answered_from = {"prompt": asked, "reply": "It is 390."}
    pair = ChatFeedback(settings.feedback_dir).prefer(agent.context, trajectory, "It is 391.")
    assert pair["prompt"] == asked
    assert pair["chosen"][0]["content"] == "It is 391." and pair["rejected"][0]["content"] == "It is 390."


def test_feedback_needs_an_action(settings):
    agent, trajectory = _agent_and_trajectory(settings, [CALC, ANSWER])
    trajectory.steps = []
    with pytest.raises(StropError):
        ChatFeedback(settings.feedback_dir).prefer(agent.context, trajectory, "better")


def test_history_and_markdown_come_from_the_checkpointed_messages(settings):
    agent, _ = _agent_and_trajectory(settings, [CALC, ANSWER])
    turns = past_turns(agent.graph.get_state(thread_config("t1")).values["messages"])
    assert len(turns) == 1 and turns[0].question == "What is 17 * 23?"
    assert [(s.tool, s.args, s.result) for s in turns[0].steps] == [("calculator", "17 * 23", "391")]
    assert turns[0].answer == "17 × 23 = **391**"
    text = thread_markdown("Sums", "t1", turns)
    assert text.startswith("# Sums") and "- **calculator** `17 * 23` → 391" in text and "## strop" in text


def test_commands_parse_and_complete(tmp_path):
    assert parse("/search cats and dogs") == ("search", "cats and dogs")
    assert parse("/HELP") == ("help", "")
    assert parse("What is 2 + 2?") is None
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "docs").mkdir()
    assert complete_path(f"{tmp_path}/no") == f"{tmp_path}/notes.md"
    assert complete_path(f"{tmp_path}/d") == f"{tmp_path}/docs/"


@pytest.mark.anyio
async def test_suggester_completes_names_and_adapters():
    suggester = SlashSuggester(lambda: ["base", "v1", "v2"])
    assert await suggester.get_suggestion("/fe") == "/feedback"
    assert await suggester.get_suggestion("/adapter v") == "/adapter v1"
    assert await suggester.get_suggestion("hello") is None


def test_a_chat_follows_the_server_to_its_new_address_keeping_the_chosen_adapter(settings):
    stand_in = StandIn([ANSWER] * 3)
    backend = stand_in(settings, lambda _m: None)
    requests = []
    make_agent = backend.make_agent
    backend.make_agent = lambda requested: requests.append(requested) or make_agent(requested)
    moved = [False]
    backend.moved = lambda: moved[0]  # stands in for a promotion that swapped the embedded server
    session = ChatSession(settings, backend)
    session.use_adapter("v1")
    session.ask("first?", "t", lambda _e: None)
    assert requests == [None, "v1"]  # still on the same server: the agent is kept
    moved[0] = True
    session.ask("second?", "t", lambda _e: None)
    assert requests == [None, "v1", "v1"] and session.adapter == "v1"


def test_a_managed_endpoint_is_refreshed_from_the_server_record(tmp_path, monkeypatch):
    settings = load_settings(state_dir=tmp_path)
    old = Endpoint("http://127.0.0.1:8000/v1", "base", "k1", managed=True, model_dir="/m/base")
    record = ServerRecord(pid=1, host="127.0.0.1", port=8001, model="merged-v1", model_dir="/m/v1", log="",
                          started_at=0.0, api_key="k2", policy="v1")
    running = [None]
    monkeypatch.setattr(VLLMServer, "running", lambda self: running[0])  # stands in for server.json and its pid
    assert refreshed(settings, old) is old  # no server recorded: nothing to follow
    running[0] = record
    new = refreshed(settings, old)
    assert (new.base_url, new.model, new.api_key, new.policy) == ("http://127.0.0.1:8001/v1", "merged-v1", "k2", "v1")
    assert refreshed(settings, new) is new
    assert refreshed(settings, replace(old, managed=False)).base_url == old.base_url  # a user's server stays put
