"""The chat app against the real agent and the session's vLLM server (see conftest)."""

import json
import time

import pytest
from textual.widgets import Input, Markdown

from strop.config import load_settings
from strop.tui.app import ChatApp
from strop.tui.widgets import ThreadItem, ToolPanel, TurnView

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def wait_for(pilot, condition, timeout):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.2)
    await pilot.pause(0.2)


async def say(pilot, line, timeout=600):
    pilot.app.query_one("#prompt", Input).value = line
    await pilot.press("enter")
    await pilot.pause(0.2)
    await wait_for(pilot, lambda: not pilot.app.answering and all(w.is_finished for w in pilot.app.workers), timeout)


async def test_chat_with_the_real_agent(live):
    settings = load_settings()
    app = ChatApp(settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.session is not None, timeout=300)
        assert app.session.backend.endpoint.startswith("http://127.0.0.1")
        await say(pilot, "What is 17 * 23?")
        turn = app.query_one(TurnView)
        assert turn.query(ToolPanel), "the first action is always a tool call"
        answer = turn.query_one(".answer", Markdown).source
        assert answer and "cancelled" not in answer and "failed" not in answer
        first = app.thread_id

        await say(pilot, "/feedback -1 The answer is 391.")
        pair = json.loads((settings.state_dir / "feedback" / "pairs.jsonl").read_text().splitlines()[-1])
        assert pair["provenance"]["source"] == "human" and "391" in pair["chosen"][0]["content"]
        assert pair["prompt"][0]["role"] == "system" and pair["rejected"][0]["content"].startswith("{")

        await say(pilot, "/export")
        exported = list((settings.state_dir / "exports").glob(f"*-{first}.md"))
        assert exported and "17 * 23" in exported[0].read_text()

        await pilot.press("ctrl+n")
        await pilot.pause(0.3)
        assert app.thread_id != first and not app.query(TurnView)
        await pilot.press("ctrl+t")
        await pilot.pause(0.3)
        assert [i.thread.id for i in app.query(ThreadItem)] == [first]
        await pilot.press("enter")
        await pilot.pause(0.5)
        assert app.thread_id == first and app.query_one(TurnView).question == "What is 17 * 23?"
