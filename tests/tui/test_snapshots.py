"""Snapshots of the main screens (pytest-textual-snapshot), on the stand-in agent (see conftest).

After an intended change of the look, update them and review the SVGs in ``__snapshots__``:
``.venv/bin/python -m pytest tests/tui/test_snapshots.py --snapshot-update``
"""

from pathlib import Path

from tests.tui.conftest import ANSWER, CALC, CITED, SEARCH, THINK, chat_app

SIZE = (110, 34)


async def _settle(pilot, *lines: str):
    app = pilot.app
    while app.session is None:
        await pilot.pause(0.05)
    for line in lines:
        app.query_one("#prompt").value = line
        await pilot.press("enter")
        await pilot.pause(0.1)
        while app.answering or not all(w.is_finished for w in app.workers):
            await pilot.pause(0.05)
    # Time-dependent text: the connection time and the measured token rate.
    banner = next(n for n in app.query(".system") if "connected to" in str(n.render()))
    banner.update("connected to stand-in (no server)")
    app._status(rate=12.5)
    app.query_one("#prompt").cursor_blink = False  # a blinking cursor would make the picture depend on timing
    await pilot.wait_for_scheduled_animations()  # scrolling to the end is animated; a busy machine is slow
    await pilot.pause(0.3)


def test_answer_with_tool_panels(settings, snap_compare):
    app = chat_app(settings, [THINK, CALC, ANSWER, SEARCH, CITED], thread="snap0001")
    assert snap_compare(app, terminal_size=SIZE,
                        run_before=lambda pilot: _settle(pilot, "What is 17 * 23?", "What is the capital of France?"))


def test_help(settings, snap_compare):
    app = chat_app(settings, [ANSWER], thread="snap0002")
    assert snap_compare(app, terminal_size=SIZE, run_before=lambda pilot: _settle(pilot, "/help"))


def test_start_server_question(settings, snap_compare):
    app = chat_app(settings.model_copy(update={"state_dir": Path(".strop")}), [ANSWER])  # a path that stays put
    app.server_up = lambda _s: False
    assert snap_compare(app, terminal_size=SIZE)
