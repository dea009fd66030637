"""One chat turn run to the end or cancelled, leaving the thread as it was before a cancelled turn.

Cancelling: the model's token callback raises :class:`Cancelled` once the switch is pulled, which ends
the model's HTTP stream at the next token instead of waiting for the whole action. It is a
``BaseException`` so the agent does not log the turn as a failed run. LangGraph may already have
checkpointed part of the turn (an action without its result), so the thread is then put back to the
checkpoint it had before the question.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langgraph.graph import END

from strop.agents.agent import Agent, Event
from strop.trajectories import Trajectory


class Cancelled(BaseException):
    """Raised inside the model's token stream to stop a turn."""


class CancelSwitch(BaseCallbackHandler):
    """A LangChain callback on the chat model: raises :class:`Cancelled` on the next token once pulled."""

    raise_error = True

    def __init__(self) -> None:
        self._pulled = threading.Event()

    def arm(self) -> None:
        self._pulled.clear()

    def pull(self) -> None:
        self._pulled.set()

    @property
    def pulled(self) -> bool:
        return self._pulled.is_set()

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        if self._pulled.is_set():
            raise Cancelled


class TokenMeter:
    """Tokens per second while the model generates (gaps between actions do not count)."""

    def __init__(self) -> None:
        self.tokens, self.seconds, self._last = 0, 0.0, None

    def token(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.seconds += now - self._last
            self.tokens += 1
        self._last = now

    def pause(self) -> None:
        self._last = None

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def thread_config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


def run_turn(agent: Agent, question: str, thread_id: str, switch: CancelSwitch,
             emit: Callable[[Event], None]) -> Trajectory | None:
    """Stream one turn to ``emit``; the trajectory, or None when the switch cancelled it."""
    before = agent.graph.get_state(thread_config(thread_id)).config
    switch.arm()
    trajectory, stream = None, agent.stream(question, thread_id)
    try:
        for event in stream:
            if switch.pulled:
                break
            emit(event)
            trajectory = event.trajectory or trajectory
    except Cancelled:
        pass
    finally:
        stream.close()
    if switch.pulled and trajectory is None:
        rewind(agent, thread_id, before)
        return None
    return trajectory


def rewind(agent: Agent, thread_id: str, before: dict[str, Any]) -> None:
    """Make the checkpoint ``before`` the thread's latest again (or forget a thread that had none)."""
    if before["configurable"].get("checkpoint_id"):
        agent.graph.update_state(before, None, as_node=END)
    else:
        agent.graph.checkpointer.delete_thread(thread_id)
