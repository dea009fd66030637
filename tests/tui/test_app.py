"""The chat app driven headless by Textual's Pilot, on the stand-in agent (see conftest)."""

import json
import time

import pytest
from textual.widgets import Collapsible, Input, Markdown

from strop.errors import StropError
from strop.tui.app import ChatApp
from strop.tui.screens import Ask
from strop.tui.turns import thread_config
from strop.tui.widgets import PassageTable, StatusBar, ThreadItem, ToolPanel, TurnView
from tests.agents.conftest import ScriptedModel
from tests.tui.conftest import ANSWER, CALC, CITED, SEARCH, THINK, chat_app

pytestmark = pytest.mark.anyio
SIZE = (120, 40)


async def wait_for(pilot, condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.05)
    await pilot.pause(0.1)


async def ready(pilot):
    await wait_for(pilot, lambda: pilot.app.session is not None)


async def say(pilot, line):
    prompt = pilot.app.query_one("#prompt", Input)
    prompt.value = line
    await pilot.press("enter")
    await pilot.pause(0.05)
    await wait_for(pilot, lambda: not pilot.app.answering and all(w.is_finished for w in pilot.app.workers))


def answer_text(app, index=-1):
    return app.query(TurnView)[index].query_one(".answer", Markdown).source


async def test_a_question_streams_tool_panels_and_a_markdown_answer(settings):
    app = chat_app(settings, [THINK, CALC, ANSWER])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await say(pilot, "What is 17 * 23?")
        turn = app.query_one(TurnView)
        panels = turn.query(ToolPanel)
        assert [p.step.tool for p in panels] == ["think", "calculator"]
        assert panels[1].step.result == "391" and "→ 391" in str(panels[1].title)
        assert all(isinstance(p, Collapsible) and p.collapsed for p in panels)
        assert answer_text(app) == "17 × 23 = **391**"
        status = str(app.query_one(StatusBar).render())
        assert "stand-in" in status and "model scripted" in status and "adapter base" in status
        assert "step 3" in status and "tok/s" in status


async def test_memory_passages_show_id_score_and_source(settings):
    app = chat_app(settings, [SEARCH, CITED])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await say(pilot, "What is the capital of France?")
        table = app.query_one(PassageTable)
        assert [(p.id, p.score, p.source) for p in table.passages] == [("abcd1234", 0.83, "geo.md"),
                                                                        ("ef567890", 0.41, "geo.md")]
        assert not app.query_one(ToolPanel).collapsed
        assert answer_text(app) == "Paris"


async def test_an_answer_from_memory_shows_its_sources_under_it(settings):
    app = chat_app(settings, [SEARCH, CITED])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await say(pilot, "What is the capital of France?")
        sources = app.query_one(TurnView).query_one(".sources")
        assert sources.display
        shown = str(sources.render())
        assert "abcd1234" in shown and "geo.md" in shown and "Paris is the capital of France." in shown
        assert "ef567890" not in shown  # found, but it does not hold the answer
        await say(pilot, "What is 17 * 23?")  # an answer without memory shows no sources
        assert not app.query(TurnView)[-1].query_one(".sources").display


async def test_a_resumed_thread_shows_the_sources_of_its_answers(settings):
    first = chat_app(settings, [SEARCH, CITED], thread="geo")
    async with first.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await say(pilot, "What is the capital of France?")
    again = chat_app(settings, [CALC, ANSWER], thread="geo")
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await wait_for(pilot, lambda: bool(again.query(TurnView)) and again.query_one(TurnView).query_one(
            ".sources").display)
        assert answer_text(again) == "Paris"
        assert "abcd1234" in str(again.query_one(TurnView).query_one(".sources").render())


class SlowModel(ScriptedModel):
    """Streams each piece of an action slowly, like a busy CPU server."""

    def _stream(self, *args, **kwargs):
        for chunk in super()._stream(*args, **kwargs):
            time.sleep(0.15)
            yield chunk


async def test_ctrl_c_cancels_and_the_thread_takes_the_next_question(settings):
    app = chat_app(settings, [CALC, ANSWER, CALC, ANSWER, CALC, ANSWER], model_class=SlowModel)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await say(pilot, "What is 17 * 23?")
        app.query_one("#prompt", Input).value = "And 18 * 23?"
        await pilot.press("enter")
        await wait_for(pilot, lambda: bool(app.query(TurnView)[-1].query(ToolPanel)))  # mid-turn, after a tool
        await pilot.press("ctrl+c")
        await wait_for(pilot, lambda: not app.answering, timeout=10)
        assert "cancelled" in answer_text(app)
        state = app.session.agent.graph.get_state(thread_config(app.thread_id))
        assert state.next == ()
        assert [m.type for m in state.values["messages"]] == ["human", "ai", "tool", "ai"]  # as before the question
        await say(pilot, "What is 17 * 23 again?")
        assert answer_text(app) == "17 × 23 = **391**"
        messages = app.session.agent.graph.get_state(thread_config(app.thread_id)).values["messages"]
        assert [m.type for m in messages] == ["human", "ai", "tool", "ai"] * 2
        assert app.session.agent.store.count() == 2  # the cancelled turn is no failed run in the log


async def test_threads_new_switch_rename_delete(settings):
    app = chat_app(settings, [CALC, ANSWER])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await say(pilot, "What is 17 * 23?")
        first = app.thread_id
        await pilot.press("ctrl+n")
        await pilot.pause(0.2)
        assert app.thread_id != first and not app.query(TurnView)
        await say(pilot, "Another question")
        second = app.thread_id
        await say(pilot, "/rename Shopping")
        assert app.session.book.get(second).name == "Shopping" and app.sub_title == "Shopping"
        await pilot.press("ctrl+t")
        await pilot.pause(0.2)
        items = list(app.query(ThreadItem))
        assert [i.thread.id for i in items] == [second, first]
        await pilot.press("down", "enter")  # resume the first thread
        await pilot.pause(0.3)
        assert app.thread_id == first and app.query_one(TurnView).question == "What is 17 * 23?"
        assert [p.step.tool for p in app.query(ToolPanel)] == ["calculator"]
        await say(pilot, "/delete")
        assert isinstance(app.screen, Ask)
        await pilot.press("y")
        await pilot.pause(0.3)
        assert app.session.book.get(first) is None and app.thread_id != first
        assert not app.session.agent.graph.get_state(thread_config(first)).values  # checkpoints gone


async def test_feedback_export_and_help(settings):
    app = chat_app(settings, [CALC, ANSWER])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await say(pilot, "What is 17 * 23?")
        await say(pilot, "/feedback +1")
        await say(pilot, "/feedback -1")
        await say(pilot, "/feedback -1 The answer is 391.")
        await pilot.pause(0.2)
        feedback = settings.state_dir / "feedback"
        ratings = [json.loads(line)["rating"] for line in (feedback / "ratings.jsonl").read_text().splitlines()]
        assert ratings == [1, -1, -1]
        pairs = (feedback / "pairs.jsonl").read_text().splitlines()
        assert len(pairs) == 1 and "The answer is 391." in json.loads(pairs[0])["chosen"][0]["content"]
        await say(pilot, "/export")
        await pilot.pause(0.2)
        exported = list((settings.state_dir / "exports").glob("*.md"))
        assert len(exported) == 1 and "17 * 23" in exported[0].read_text()
        assert any(str(exported[0]) in str(n.render()) for n in app.query(".system"))
        await say(pilot, "/help")
        assert "/feedback" in app.query(".system").last().source


async def test_memory_and_adapter_commands(settings, tmp_path):
    app = chat_app(settings, [CALC, ANSWER])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await say(pilot, "/remember The flight leaves at 9.")
        await say(pilot, "/search capital")
        await say(pilot, f"/ingest {tmp_path}")
        await pilot.pause(0.3)
        memory = app.stand_in.memory
        assert memory.facts == ["The flight leaves at 9."] and memory.ingested == [str(tmp_path)]
        assert app.query(PassageTable)
        await say(pilot, "/adapter")
        assert "**base** (in use)" in app.query(".system").last().source
        await say(pilot, "/adapter base")
        await pilot.pause(0.2)
        assert app.session.adapter == "base" and len(app.stand_in.models) == 2


async def test_errors_are_notifications(settings):
    def failing(_settings, _progress):
        raise StropError("Cannot reach the server.", fix="Start it.")

    app = ChatApp(settings, backend=failing, server_up=lambda _s: True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.5)
        messages = [n.message for n in app._notifications]
        assert messages == ["Cannot reach the server.\nFix: Start it."]
        assert "not connected" in str(app.query_one(StatusBar).render())


async def test_offers_to_start_the_server_and_shows_progress(settings):
    app = chat_app(settings, [ANSWER])
    app.server_up = lambda _s: False
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        assert isinstance(app.screen, Ask) and "Start the embedded vLLM" in app.screen.question
        await pilot.press("enter")  # the Start button has focus
        await ready(pilot)
        notes = [str(n.render()) for n in app.query(".system")]
        assert any("stand-in model, no server" in n or "connected" in n for n in notes)


async def test_declining_to_start_the_server_quits(settings):
    app = chat_app(settings, [ANSWER])
    app.server_up = lambda _s: False
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        await pilot.press("escape")
        await pilot.pause(0.2)
    assert app.return_code == 0 and app.session is None


async def test_a_thread_given_on_the_command_line_is_listed_under_its_name(settings):
    app = chat_app(settings, [CALC, ANSWER], thread="trip")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await say(pilot, "What is 17 * 23?")
        assert [(t.id, t.name) for t in app.session.book.list()] == [("trip", "trip")]
        assert app.sub_title == "trip"


async def test_from_a_new_thread_the_list_opens_on_the_most_recent_one(settings):
    app = chat_app(settings, [CALC, ANSWER])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await say(pilot, "What is 17 * 23?")
        first = app.thread_id
        await pilot.press("ctrl+n")
        await pilot.pause(0.2)
        await pilot.press("ctrl+t", "enter")
        await pilot.pause(0.3)
        assert app.thread_id == first and app.query_one(TurnView).question == "What is 17 * 23?"


class SlowIngestMemory:
    """Wraps the stand-in memory: ingesting takes a while, as embedding a folder does."""

    def __init__(self, memory, seconds=0.8):
        self.memory, self.seconds = memory, seconds

    def __getattr__(self, name):
        return getattr(self.memory, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def ingest(self, paths, **kwargs):
        time.sleep(self.seconds)
        return self.memory.ingest(paths, **kwargs)


async def test_ingest_reports_before_the_next_question_is_answered(settings, tmp_path):
    app = chat_app(settings, [CALC, ANSWER])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.session.backend.memory = SlowIngestMemory(app.stand_in.memory)
        prompt = app.query_one("#prompt", Input)
        prompt.value = f"/ingest {tmp_path}"
        await pilot.press("enter")
        prompt.value = "What is 17 * 23?"
        await pilot.press("enter")  # asked while the ingest is still running
        await wait_for(pilot, lambda: not app.answering and all(w.is_finished for w in app.workers))
        log = list(app.query_one("#log").children)
        note = next(w for w in log if "ingest" in str(w.render()))
        turn = next(w for w in log if isinstance(w, TurnView))
        assert log.index(note) < log.index(turn)
        assert "📥 ingested 1 files: 3 chunks added" in str(note.render())
        model = app.stand_in.models[0]
        assert model.calls, "the question was answered"
        assert app.stand_in.memory.ingested == [str(tmp_path)]
        assert answer_text(app) == "17 × 23 = **391**"


async def test_a_question_waits_for_the_ingest_started_before_it(settings, tmp_path):
    app = chat_app(settings, [CALC, ANSWER])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.session.backend.memory = SlowIngestMemory(app.stand_in.memory)
        seen_at_first_call = []
        model = app.stand_in.models[0]
        original = model._next

        def recording(messages, kwargs):
            seen_at_first_call.append(list(app.stand_in.memory.ingested))
            return original(messages, kwargs)

        object.__setattr__(model, "_next", recording)
        prompt = app.query_one("#prompt", Input)
        prompt.value = f"/ingest {tmp_path}"
        await pilot.press("enter")
        prompt.value = "What is 17 * 23?"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not app.answering and all(w.is_finished for w in app.workers))
        assert seen_at_first_call and seen_at_first_call[0] == [str(tmp_path)]


async def test_an_empty_note_file_is_reported_in_the_conversation(settings, tmp_path):
    from strop.memory.core import IngestReport

    app = chat_app(settings, [CALC, ANSWER])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        empty = tmp_path / "empty.md"
        empty.write_text("")
        app.stand_in.memory.ingest = lambda paths, **kw: IngestReport(problems=[f"{empty}: The file is empty."])
        await say(pilot, f"/ingest {empty}")
        note = next(w for w in app.query(".system") if "ingest" in str(w.render()))
        assert "skipped" in str(note.render()) and "empty" in str(note.render())


async def test_feedback_is_confirmed_in_the_conversation(settings):
    app = chat_app(settings, [CALC, ANSWER])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await say(pilot, "What is 17 * 23?")
        await say(pilot, "/feedback +1")
        said = str(app.query(".system").last().render())
        assert "Feedback stored: +1" in said and "391" in said and "ratings.jsonl" in said
        await say(pilot, "/feedback -1 It is 391.")
        said = str(app.query(".system").last().render())
        assert "“It is 391.” preferred to" in said and "pairs.jsonl" in said
