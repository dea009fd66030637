"""Preference pairs from scored trajectories, one decision at a time.

Two episodes of the same prompt share their history until the first action where they differ; that
action is the decision the critic's scores tell apart. A pair is that shared history (as the context
the model saw: system prompt, exemplars, conversation) with the better episode's next action as
``chosen`` and the worse one's as ``rejected``. Tool results only ever appear inside the prompt, so
DPO never treats environment output as the model's own tokens. A memory answer is made by a plain call
over the passages, not by the agent's action: its pair is that call's messages and the model's own replies,
so training teaches the answer step what serving will ask of it. Where strop repaired an action before running
it (a query that loops or shares no word with the question is replaced by the question, a loop is cut), the
decision is the call it ran: that call earned the outcome, not the text the model wrote.

A calculator call on a bare number (``{"expression": "46.0"}`` for "46 divided by 1") computes nothing: it
passes only where the question's own number already is the answer, so preferring it teaches copying a number
from the question. Such an action is never ``chosen``, and among equally scored episodes one that computed is
the better.

Pairs are written in TRL's conversational preference format (``prompt``/``chosen``/``rejected``
message lists), with an ``id`` and ``provenance`` (trajectory ids, scores, critic version) beside them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from strop.agents.graph import SEARCH
from strop.tools.calculator import computes_nothing
from strop.trajectories import Trajectory

Messages = list[dict[str, Any]]
Context = Callable[[Messages], Messages]  # conversation so far -> everything the model was shown


class Decision(NamedTuple):
    """One model action of a run: the conversation before it, the action, and the messages the model read
    when they were not the agent's context built from that conversation (None)."""

    history: Messages
    action: str
    read: Messages | None = None


@dataclass(frozen=True)
class Scored:
    trajectory: Trajectory
    score: float  # 0..1 from the critic
    context: Context  # rebuilds the model's input for this trajectory's agent
    passed: bool | None = None  # the case's graders passed it; None: no gold answer read
    found: bool | None = None  # its memory searches returned an answer the graders accept; None: not looked for

    @property
    def outcome(self) -> Outcome:
        return self.score, self.passed


Outcome = tuple[float, bool | None]  # an episode's critic score, and whether the case's graders passed it


def clearly_better(better: Outcome, worse: Outcome, min_margin: float, pass_over_fail: bool = False) -> bool:
    """``better`` scored at least ``min_margin`` above ``worse``, or (``pass_over_fail``) the graders passed it and
    failed ``worse``: a verified answer beats a near miss however much partial credit the near miss earned."""
    (score, passed), (other_score, other_passed) = better, worse
    if score - other_score >= min_margin:
        return True
    return pass_over_fail and bool(passed) and other_passed is False and score > other_score


def decisions(trajectory: Trajectory) -> list[Decision]:
    """Each model action of the run with the conversation that preceded it (role and content only). A final
    answer strop wrote from a plain call over the passages is that call's own reply, read from its messages.

    In a chat thread the earlier turns come first: the model saw them too, but they are not this run's actions.
    """
    start = _run_start(trajectory)
    history = [_plain(m) for m in trajectory.messages[:start]]
    steps, actions_left = [], trajectory.model_calls
    for message in trajectory.messages[start:]:
        if message["role"] == "assistant" and actions_left > 0:
            steps.append(Decision(list(history), _as_run(message)))
            actions_left -= 1
        history.append(_plain(message))
    made_by = trajectory.answered_from
    if made_by and steps:  # the answer call is the run's last model call
        steps[-1] = Decision(steps[-1].history, made_by["reply"], made_by["prompt"])
    return steps


def pair_episodes(better: Scored, worse: Scored, critic: str) -> dict[str, Any] | None:
    """The pair at the first decision where the two runs differ; None when they never differ."""
    for a, b in zip(decisions(better.trajectory), decisions(worse.trajectory), strict=False):
        if a.history != b.history or a.read != b.read:
            return None  # same actions met different tool results: no shared decision left
        if _canonical(a.action) != _canonical(b.action):
            return text_pair(a.read or better.context(a.history), a.action, b.action, {
                "chosen_trajectory": better.trajectory.id, "rejected_trajectory": worse.trajectory.id,
                "chosen_score": better.score, "rejected_score": worse.score, "critic": critic,
                "step": len([m for m in a.history if m["role"] == "assistant"]), "source": "critic"})
    return None


def build_pairs(groups: Iterable[list[Scored]], min_margin: float, critic: str, most: int | None = None,
                pass_over_fail: bool = False, queries_by_retrieval: bool = False) -> tuple[list[dict], dict[str, int]]:
    """Pairs from groups of episodes of one prompt each: the best episode against each clearly worse one (see
    :func:`clearly_better`), or against the ``most`` worst-scored of them (the clearest differences); with
    ``queries_by_retrieval``, two search queries only where their searches decided it (:func:`search_decided`).

    Returns the pairs (deduplicated) and counts of why groups gave none.
    """
    pairs: dict[str, dict] = {}
    why = {"groups": 0, "no_margin": 0, "no_divergence": 0, "duplicates": 0, "copied_number": 0,
           "search_undecided": 0}
    for group in groups:
        why["groups"] += 1
        # ties broken by trajectory id, not by the order episodes finished in: a resumed round makes the same pairs
        ranked = sorted(group, key=lambda s: (-s.score, _copies_a_number(s.trajectory), s.trajectory.id))
        worse = [w for w in ranked[1:] if clearly_better(ranked[0].outcome, w.outcome, min_margin, pass_over_fail)]
        if not worse:
            why["no_margin"] += 1
            continue
        made = [(w, pair_episodes(ranked[0], w, critic)) for w in worse]
        made = [(w, p) for w, p in made if p is not None]
        if not made:
            why["no_divergence"] += 1
        decided = [p for w, p in made if not queries_by_retrieval or search_decided(ranked[0], w, p)]
        why["search_undecided"] += len(made) - len(decided)
        kept = [p for p in decided if not _restates_a_number(p["chosen"][0]["content"])]
        why["copied_number"] += len(decided) - len(kept)
        made = kept[-most:] if most else kept  # ranked best first: the worst-scored episodes come last
        for pair in made:
            why["duplicates"] += pair["id"] in pairs
            pairs[pair["id"]] = pair
    return list(pairs.values()), why


def search_decided(better: Scored, worse: Scored, pair: dict[str, Any]) -> bool:
    """Whether a pair between two memory-search queries was decided by what the searches found: the better
    episode's returned an answer the graders accept and the worse one's did not. Where both or neither found one,
    the answer written after the search made the difference, and crediting the query would teach a rewording that
    found nothing better. Other decisions, and episodes whose finds were not looked for, always count."""
    queries = all(_call(side[0]["content"]).get("tool") == SEARCH for side in (pair["chosen"], pair["rejected"]))
    if not queries or better.found is None or worse.found is None:
        return True
    return better.found and not worse.found


def human_pair(prompt: Messages, chosen: str, rejected: str, note: str = "") -> dict[str, Any]:
    """A pair from a person's feedback (e.g. a better answer typed in chat), marked as such."""
    return text_pair(prompt, chosen, rejected, {"source": "human", "note": note})


def text_pair(prompt: Messages, chosen: str, rejected: str, provenance: dict[str, Any]) -> dict[str, Any]:
    """A pair in TRL's conversational format: ``prompt`` then the chosen or the rejected reply."""
    return {"id": _pair_id(prompt, chosen, rejected), "prompt": prompt, "chosen": [_said(chosen)],
            "rejected": [_said(rejected)], "provenance": provenance}


def _as_run(message: dict[str, Any]) -> str:
    """The action as strop ran it: the model's text, or the repaired call when strop changed its arguments."""
    text = str(message.get("content") or "")
    calls = message.get("tool_calls") or []
    try:
        written, ran = json.loads(text), calls[0]["function"]
        args = json.loads(ran["arguments"])
    except (json.JSONDecodeError, IndexError, KeyError, TypeError):
        return text
    if not isinstance(written, dict) or written.get("tool") != ran.get("name") or written.get("args") == args:
        return text
    return action(ran["name"], args)


def action(tool: str, args: dict[str, Any]) -> str:
    """An action as the model writes it under its JSON schema (compact, as vLLM emits it)."""
    return json.dumps({"tool": tool, "args": args}, ensure_ascii=False, separators=(",", ":"))


def _copies_a_number(trajectory: Trajectory) -> bool:
    return any(_restates_a_number(d.action) for d in decisions(trajectory))


def _restates_a_number(action: str) -> bool:
    """A calculator call that computes nothing (see the module's docstring)."""
    call = _call(action)
    args = call.get("args") if call.get("tool") == "calculator" else None
    return isinstance(args, dict) and isinstance(args.get("expression"), str) and computes_nothing(args["expression"])


def _call(action: str) -> dict[str, Any]:
    """The action's JSON object; empty when it is not one."""
    try:
        call = json.loads(action)
    except json.JSONDecodeError:
        return {}
    return call if isinstance(call, dict) else {}


def _said(action: str) -> dict[str, str]:
    return {"role": "assistant", "content": action}


def _run_start(trajectory: Trajectory) -> int:
    starts = [i for i, m in enumerate(trajectory.messages)
              if m["role"] == "user" and m.get("content") == trajectory.prompt]
    return starts[-1] if starts else 0


def _plain(message: dict[str, Any]) -> dict[str, Any]:
    return {"role": message["role"], "content": str(message.get("content") or "")}


def _canonical(action: str) -> str:
    try:
        return json.dumps(json.loads(action), sort_keys=True)
    except json.JSONDecodeError:
        return action


def _pair_id(prompt: Messages, chosen: str, rejected: str) -> str:
    text = json.dumps([prompt, _canonical(chosen), _canonical(rejected)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
