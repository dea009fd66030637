"""Unattended self-improvement: rounds that start on triggers, share the CPU by a policy, and are undone when
the promoted adapter does worse in use.

``strop improve --once`` (cron, systemd timers) and ``--watch`` (a loop) call ``Watcher.once``, which holds the
improvement lock (the one ``strop improve`` takes, so two processes never run a round on one state folder) and:

1. resumes an unfinished round (one a kill interrupted), or starts one when a trigger fires: enough new chat
   runs or human feedback pairs since the last round started, or the interval passed; never sooner than
   ``watch.min_gap_s`` after the last round started;
2. checks a fresh promotion: the smoke suite with the new and with the previous adapter;
3. compares live signals of people's runs with the new adapter against the previous adapter's, and rolls back
   when one rose beyond ``watch.live_max_increase``;
4. applies the retention policy.

What it decides is written down: ``<round>/trigger.json``, ``<improve>/watch/safety.json`` (per adapter: smoke and
live verdicts), rollbacks with their reason in the registry history, and ``<improve>/watch/events.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from strop.config import Settings
from strop.errors import StropError
from strop.feedback import FeedbackLog
from strop.files import append_line, exclusive, plain_name, read_lines, write_atomic
from strop.serving.adapters import Registry
from strop.training.gate import decide
from strop.training.loop import STAGES, Display, Improver, Round
from strop.training.retention import prune, read_json
from strop.trajectories import Trajectory, TrajectoryStore

Say = Callable[[str], None]
SmokeCheck = Callable[[str, str | None], dict[str, Any]]  # (new adapter, previous or None) -> verdict
SIGNALS = {"tool_failures": "runs with a failed tool call", "budget_exhausted": "runs out of step budget",
           "errors": "runs that failed", "negative_feedback": "runs rated -1"}


class RoundRunning(StropError):
    """Another process holds the improvement lock."""


# -- rounds on disk ------------------------------------------------------------------------------

def rounds(settings: Settings) -> list[Round]:
    return [Round(d) for d in sorted(settings.improve_dir.glob("round-*")) if d.is_dir()]


def unfinished(settings: Settings) -> Round | None:
    """The last round when a kill or an error left it unfinished."""
    return next((r for r in rounds(settings)[-1:] if not r.finished), None)


def abandon(rnd: Round, reason: str) -> list[str]:
    """End an unfinished round where it stands: its first unfinished stage stops with ``reason`` and the later ones
    are skipped, as when a stage finds nothing to do. What it wrote stays, the registry is not touched. Returns
    the stages so ended."""
    left = [stage for stage in STAGES if not rnd.done(stage)]
    for n, stage in enumerate(left):
        rnd.finish(stage, {"stop": f"abandoned: {reason}", "abandoned": True} if n == 0
                   else {"skipped": f"abandoned: {reason}"})
    return left


def abandon_unfinished(settings: Settings, reason: str) -> tuple[Round, list[str]]:
    """``strop improve --abandon``: end the unfinished round (under the improvement lock) and log why."""
    busy = StropError(f"A round is running on {settings.state_dir} now.",
                      fix="Stop that `strop improve` first; only a round nothing runs can be abandoned.")
    with exclusive(settings.improve_dir / ".lock", busy):
        rnd = unfinished(settings)
        if rnd is None:
            raise StropError(f"No unfinished round in {settings.improve_dir}.",
                             fix="Nothing to abandon; `strop history` lists the rounds.")
        ended = abandon(rnd, reason)
        append_line(settings.improve_dir / "watch" / "events.jsonl",
                    {"at": time.time(), "event": "abandon", "round": rnd.number, "reason": reason, "stages": ended})
    return rnd, ended


def trigger_record(rnd: Round) -> dict[str, Any]:
    return read_json(rnd.dir / "trigger.json")


def round_started(rnd: Round) -> float:
    """When a round started: recorded by the watcher, else when its prompts were collected."""
    if "started_at" in trigger_record(rnd):
        return trigger_record(rnd)["started_at"]
    prompts = rnd.dir / "prompts.done"
    return (prompts if prompts.exists() else rnd.dir).stat().st_mtime


def feedback_pairs(settings: Settings) -> int:
    """Human preference pairs given so far (``/feedback -1 <better answer>`` in chat)."""
    return len(FeedbackLog(settings.feedback_dir).human_pairs())


def feedback_seen(rnd: Round) -> int:
    """Human pairs there were when a round started (a round run by hand: the ones it mixed in)."""
    if "feedback_pairs" in trigger_record(rnd):
        return trigger_record(rnd)["feedback_pairs"]
    return rnd.result("pairs").get("human", 0) if rnd.done("pairs") else 0


# -- triggers -------------------------------------------------------------------------------------

@dataclass
class Triggers:
    """What has piled up since the last round started, and whether a round is due."""

    new_runs: int
    new_pairs: int
    last_start: float | None
    fired: list[str]
    wait_s: float  # until watch.min_gap_s allows the next round

    @property
    def due(self) -> bool:
        return bool(self.fired) and self.wait_s <= 0


def triggers(settings: Settings, store: TrajectoryStore, now: float) -> Triggers:
    w = settings.watch
    done = rounds(settings)
    last = done[-1] if done else None
    since = round_started(last) if last else None
    runs = store.chat_count(since or 0.0)
    pairs = feedback_pairs(settings) - (feedback_seen(last) if last else 0)
    fired = []
    if w.new_runs and runs >= w.new_runs:
        fired.append(f"{runs} new chat runs (watch.new_runs = {w.new_runs})")
    if w.new_feedback_pairs and pairs >= w.new_feedback_pairs:
        fired.append(f"{pairs} new feedback pairs (watch.new_feedback_pairs = {w.new_feedback_pairs})")
    if w.interval_s and (since is None or now - since >= w.interval_s):
        fired.append(f"interval of {w.interval_s:g} s (watch.interval_s)")
    wait = 0.0 if since is None else max(0.0, since + w.min_gap_s - now)
    return Triggers(runs, pairs, since, fired, wait)


# -- sharing the CPU with serving -----------------------------------------------------------------

def describe_policy(settings: Settings) -> str:
    w = settings.watch
    if w.policy == "full":
        return f"full: rounds run at normal priority, training with train.threads = {settings.train.threads}"
    line = f"{w.policy}: rounds run at nice {w.niceness}, training with {w.train_threads} thread(s); serving first"
    if w.policy == "idle":
        line += (f"; a round starts, and goes on to each next stage, only after {w.idle_s:g} s without a chat run "
                 f"and below load {w.max_load:g} per core")
    return line


def round_settings(settings: Settings) -> Settings:
    """The settings an unattended round runs with: fewer training threads unless the policy is full."""
    if settings.watch.policy == "full":
        return settings
    train = settings.train.model_copy(update={"threads": settings.watch.train_threads})
    return settings.model_copy(update={"train": train})


def lower_priority(settings: Settings) -> None:
    """Make this process (and the training it runs) yield the CPU to serving; a no-op under policy full."""
    if settings.watch.policy != "full":
        os.nice(max(0, settings.watch.niceness - os.nice(0)))


def idle(settings: Settings, store: TrajectoryStore, now: float) -> tuple[bool, str]:
    """Under policy idle: whether people leave the machine alone now, and if not, why."""
    w = settings.watch
    if w.policy != "idle":
        return True, ""
    last = store.last_chat_at()
    if last is not None and now - last < w.idle_s:
        return False, f"a chat ran {now - last:.0f} s ago (watch.idle_s = {w.idle_s:g})"
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    if load > w.max_load:
        return False, f"load {load:.2f} per core is above watch.max_load = {w.max_load:g}"
    return True, ""


class PausingDisplay(Display):
    """Policy idle: before each stage of a round, wait while people use the machine."""

    def __init__(self, inner: Display, wait: Callable[[str], None]):
        self.inner, self.wait = inner, wait

    def stage(self, name: str, detail: str = "") -> None:
        self.wait(name)
        self.inner.stage(name, detail)

    def progress(self, stage: str, done: int, total: int) -> None:
        self.inner.progress(stage, done, total)

    def gate(self, run, cases):
        return self.inner.gate(run, cases)


# -- live signals ---------------------------------------------------------------------------------

def live_signals(runs: list[Trajectory], negative: set[str]) -> dict[str, float]:
    """Failure rates of people's runs: failed tool calls, exhausted budgets, errors, -1 feedback."""
    def share(flags: list[bool]) -> float:
        return sum(flags) / len(flags) if flags else 0.0

    return {"tool_failures": share([any(s.kind == "tool" and s.error for s in t.steps) for t in runs]),
            "budget_exhausted": share([t.status == "budget_exhausted" for t in runs]),
            "errors": share([t.status == "error" for t in runs]),
            "negative_feedback": share([t.id in negative for t in runs])}


def negative_ratings(settings: Settings) -> set[str]:
    return {t for t, rating in FeedbackLog(settings.feedback_dir).ratings().items() if rating < 0}


def live_verdict(settings: Settings, store: TrajectoryStore, adapter: str, previous: str | None,
                 promoted_at: float) -> dict[str, Any]:
    """The new adapter's first runs after promotion against the previous adapter's last runs before it."""
    w = settings.watch
    new = store.chat_runs(adapter, since=promoted_at, limit=w.live_window, newest_first=False)
    old = store.chat_runs(previous, before=promoted_at, limit=w.live_window, newest_first=True)
    verdict: dict[str, Any] = {"runs": len(new), "baseline_runs": len(old), "worse": False}
    if len(new) < w.live_min_runs:
        return verdict | {"state": "watching", "reason": f"{len(new)} of {w.live_min_runs} runs so far"}
    if len(old) < w.live_min_runs:  # nothing to compare with: the smoke check stays the only guard
        state = "confirmed" if len(new) >= w.live_window else "watching"
        return verdict | {"state": state, "reason": f"no baseline: {previous or 'base'} had {len(old)} runs"}
    negative = negative_ratings(settings)
    now_rates, before = live_signals(new, negative), live_signals(old, negative)
    rises = [(k, now_rates[k], before[k]) for k in SIGNALS if now_rates[k] - before[k] > w.live_max_increase]
    verdict |= {"signals": now_rates, "baseline": before}
    if rises:
        said = "; ".join(f"{SIGNALS[k]} {a:.0%} vs {b:.0%}" for k, a, b in rises)
        return verdict | {"state": "worse", "worse": True, "reason": (
            f"live: {said} with {previous or 'base'}, over {len(new)} and {len(old)} chat runs "
            f"(watch.live_max_increase = {w.live_max_increase:.0%})")}
    state = "confirmed" if len(new) >= w.live_window else "watching"
    return verdict | {"state": state, "reason": f"no live signal rose beyond {w.live_max_increase:.0%} over "
                                                f"{len(new)} runs"}


def promotion(registry: Registry, adapter: str) -> dict[str, Any] | None:
    """The history entry that made ``adapter`` active, when it was a promotion (not a return by rollback)."""
    for entry in reversed(registry.history):
        if entry["adapter"] == adapter:
            return entry if entry["event"] == "promote" else None
    return None


# -- the watcher -----------------------------------------------------------------------------------

class Watcher:
    """One state folder's unattended rounds, post-promotion checks and retention."""

    def __init__(self, settings: Settings, make_improver: Callable[[Settings, Display], Improver], *,
                 display: Display | None = None, smoke: SmokeCheck | None = None, say: Say = lambda _: None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.make_improver = make_improver
        self.say, self.clock, self.sleep = say, clock, sleep
        inner = display or Display()
        self.display = PausingDisplay(inner, self.wait_until_idle) if settings.watch.policy == "idle" else inner
        self.smoke = smoke or self.smoke_check
        self.store = TrajectoryStore(settings.trajectories_path)
        self.registry = Registry(settings.adapters_dir)
        self.dir = settings.improve_dir / "watch"
        self._improver: Improver | None = None

    def improver(self) -> Improver:
        """Made on first need: it connects to (and may start) the model server."""
        if self._improver is None:
            self._improver = self.make_improver(round_settings(self.settings), self.display)
        return self._improver

    def locked(self) -> contextlib.AbstractContextManager[None]:
        # the very lock file Improver.locked() holds, so `strop improve` and the watcher exclude each other
        return exclusive(self.settings.improve_dir / ".lock",
                         RoundRunning(f"A round is running on {self.settings.state_dir}.", fix="Nothing to do."))

    # -- one look ---------------------------------------------------------------------------
    def once(self) -> dict[str, Any]:
        """Resume or start a round if due, check the active adapter, prune; returns what happened."""
        try:
            with self.locked():
                return self._once()
        except RoundRunning:
            self.say("A round is already running on this state folder (another strop holds its lock); nothing to do.")
            return {"busy": True}

    def _once(self) -> dict[str, Any]:
        now = self.clock()
        self.beat("looking")
        report: dict[str, Any] = {"at": now}
        pending = unfinished(self.settings)
        if pending is not None:
            report |= self.guarded_round(pending, f"resume round {pending.number}, interrupted")
        else:
            due = triggers(self.settings, self.store, now)
            report["triggers"] = due
            ready, why = idle(self.settings, self.store, now)
            if due.due and ready:
                report |= self.guarded_round(None, "; ".join(due.fired))
            elif due.due:
                report["waiting"] = why
                self.say(f"A round is due but waits: {why}.")
            else:
                self.say(f"Next round: {next_round_line(self.settings, due, now)}")
        # the checks on the active adapter and retention run whatever became of the round
        report["safety"] = self.check_active()
        report["pruned"] = prune(self.settings, self.store, self.registry, now)
        if any(report["pruned"].values()):
            self.event("prune", **report["pruned"])
        self.beat("idle")
        return report

    def guarded_round(self, pending: Round | None, trigger: str) -> dict[str, Any]:
        """Run a round; one that raises is recorded (``round_failed``) instead of ending the look."""
        try:
            return {"round": self.run_round(trigger)}
        except Exception as exc:  # noqa: BLE001 - whatever stops a round, the look goes on
            return {"round_failed": self.round_failed(pending, exc)}

    def round_failed(self, pending: Round | None, exc: Exception) -> dict[str, Any]:
        rnd = pending or unfinished(self.settings)
        number = rnd.number if rnd else None
        why = exc.message if isinstance(exc, StropError) else f"{type(exc).__name__}: {exc}"
        self.event("round-failed", round=number, error=why, traceback=traceback.format_exc(limit=8))
        times = sum(1 for e in self.events() if e.get("event") == "round-failed" and e.get("round") == number)
        self.say(f"Round {number} failed ({times} time{'s' * (times > 1)} so far): {why}. The next look resumes it; "
                 f"`strop improve --abandon` ends it.")
        return {"round": number, "error": why, "times": times}

    def run_round(self, trigger: str) -> dict[str, Any]:
        improver = self.improver()  # a server it starts keeps normal priority: it serves people too
        lower_priority(self.settings)
        rnd = improver.current_round()
        if not (rnd.dir / "trigger.json").exists():
            write_atomic(rnd.dir / "trigger.json", json.dumps({
                "started_at": self.clock(), "trigger": trigger, "feedback_pairs": feedback_pairs(self.settings)}))
        self.say(f"Round {rnd.number}: {trigger}.")
        self.event("round", round=rnd.number, trigger=trigger)
        self.beat(f"round {rnd.number}")
        report = improver.run_round()
        promoted = report.get("promote", {}).get("promoted")
        self.event("round-end", round=rnd.number, promoted=promoted)
        return report

    def wait_until_idle(self, stage: str) -> None:
        while True:
            ready, why = idle(self.settings, self.store, self.clock())
            if ready:
                return
            self.say(f"Paused before {stage}: {why}.")
            self.beat(f"paused before {stage}: {why}")
            self.sleep(self.settings.watch.poll_s)

    # -- after a promotion ----------------------------------------------------------------
    def check_active(self) -> dict[str, Any] | None:
        """Smoke-check a freshly promoted adapter once, then watch its live signals until confirmed."""
        active = self.registry.active
        entry = promotion(self.registry, active) if active else None
        if entry is None:
            return None
        safety = self.safety()
        state = safety.get(active, {})
        if state.get("promoted_at") != entry["at"]:
            state = {"promoted_at": entry["at"], "previous": entry["previous"]}
        if state.get("state") in ("confirmed", "rolled back"):
            return state
        previous = state["previous"]
        if "smoke" not in state and self.settings.watch.smoke_suite:
            try:
                state["smoke"] = self.smoke(active, previous)
            except StropError as exc:  # e.g. the server is down: try again at the next look
                self.say(f"The smoke check of {active} could not run: {exc.message}")
                return state
            self.event("smoke", adapter=active, **state["smoke"])
            if not state["smoke"]["pass"]:
                return self.roll_back(safety, active, state, state["smoke"]["reason"])
        state["live"] = live_verdict(self.settings, self.store, active, previous, entry["at"])
        if state["live"]["worse"]:
            return self.roll_back(safety, active, state, state["live"]["reason"])
        state["state"] = state["live"]["state"]
        self.save_safety(safety | {active: state})
        return state

    def roll_back(self, safety: dict[str, Any], adapter: str, state: dict[str, Any], reason: str) -> dict[str, Any]:
        self.registry.set_active(state["previous"], "rollback", reason)
        state |= {"state": "rolled back", "reason": reason, "at": self.clock()}
        self.save_safety(safety | {adapter: state})
        self.event("rollback", adapter=adapter, to=state["previous"], reason=reason)
        self.say(f"Rolled back {adapter} to {state['previous'] or 'the base model'}: {reason}")
        return state

    def smoke_check(self, adapter: str, previous: str | None) -> dict[str, Any]:
        """The smoke suite with the new and the previous adapter (resumable runs); fails on a drop beyond
        ``watch.smoke_max_drop``."""
        from strop.serving.adapters import resolve_adapter

        w = self.settings.watch
        improve = self.settings.improve.model_copy(update={"suites": [w.smoke_suite], "gate_limit": None})
        checker = self.make_improver(self.settings.model_copy(update={"improve": improve}), self.display)
        folder = Round(self.dir / f"smoke-{plain_name(adapter, 'adapter name')}")
        folder.dir.mkdir(parents=True, exist_ok=True)
        self.say(f"Smoke check of {adapter} against {previous or 'the base model'} ({w.smoke_suite}).")
        if self.settings.serve.adapter_mode == "merged":
            return self.merged_smoke_check(checker, folder, adapter, previous)
        for name in (adapter, previous or "base"):  # served again after a server restart
            resolve_adapter(self.settings, checker.endpoint, name)
        new, old = checker.gate_run(folder, "new", adapter), checker.gate_run(folder, "previous", previous)
        verdict = decide(old, new, w.smoke_max_drop, min_gain=-1.0)
        return {"pass": verdict["promote"], "reason": f"smoke: {verdict['reason']}", "suites": verdict["suites"],
                "runs": {"new": new.id, "previous": old.id}}

    def merged_smoke_check(self, checker: Improver, folder: Round, adapter: str, previous: str | None
                           ) -> dict[str, Any]:
        """The smoke check when only the promoted model is served (``serve.adapter_mode = merged``): its run is
        compared with an earlier smoke run of the previous model if one was kept; without one it passes when
        every episode ran (the previous model cannot be served beside it)."""
        new = checker.gate_run(folder, "new", adapter)
        old = checker.new_gate().earlier_run(previous)
        if old is not None:
            verdict = decide(old, new, self.settings.watch.smoke_max_drop, min_gain=-1.0)
            return {"pass": verdict["promote"], "reason": f"smoke: {verdict['reason']}",
                    "suites": verdict["suites"], "runs": {"new": new.id, "previous": old.id}}
        failed = [r for r in new.records() if r.get("status") in ("error", "timeout")]
        reason = (f"smoke: {len(failed)} episodes of {adapter} failed to run" if failed else
                  f"smoke: every episode of {adapter} ran; no earlier smoke run of "
                  f"{previous or 'the base model'} to compare with")
        return {"pass": not failed, "reason": reason, "suites": [], "runs": {"new": new.id}}

    # -- records ----------------------------------------------------------------------------
    def safety(self) -> dict[str, Any]:
        return read_json(self.dir / "safety.json")

    def save_safety(self, safety: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / "safety.json", json.dumps(safety, indent=2))

    def events(self) -> list[dict[str, Any]]:
        return read_lines(self.dir / "events.jsonl")

    def event(self, kind: str, **fields: Any) -> None:
        append_line(self.dir / "events.jsonl", {"at": self.clock(), "event": kind, **fields})

    def beat(self, doing: str) -> None:
        """What this watcher does now, for `strop status`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / "heartbeat.json", json.dumps({"pid": os.getpid(), "at": self.clock(),
                                                              "doing": doing, "poll_s": self.settings.watch.poll_s}))


def keep_watching(watcher: Watcher, show: Callable[[dict[str, Any]], None], warn: Say,
                  looks: int | None = None) -> None:
    """``--watch``: a look every ``watch.poll_s``. A look that raises, whatever the exception, is logged (a line,
    and its traceback in events.jsonl) and the next look waits longer, doubling up to an hour; a good look
    brings back the normal pace. ``looks`` bounds the number of looks (tests)."""
    failures = 0
    while looks is None or looks > 0:
        looks = None if looks is None else looks - 1
        try:
            report = watcher.once()
        except Exception as exc:  # noqa: BLE001 - one bad look never ends the watcher
            report = {"look_failed": f"{type(exc).__name__}: {exc}"}
            with contextlib.suppress(OSError):  # a full disk must not end the watcher either
                watcher.event("look-failed", error=report["look_failed"], traceback=traceback.format_exc(limit=8))
        show(report)
        failures = failures + 1 if "look_failed" in report or "round_failed" in report else 0
        pause = backoff(watcher.settings.watch.poll_s, failures)
        if failures:
            warn(f"{report.get('look_failed') or report['round_failed']['error']}; next look in {pause:.0f} s.")
        watcher.sleep(pause)


def backoff(poll_s: float, failures: int) -> float:
    """The pause before the next look after ``failures`` failed looks in a row."""
    return poll_s if failures == 0 else min(poll_s * 2 ** failures, max(poll_s, 3600.0))


def next_round_line(settings: Settings, due: Triggers, now: float) -> str:
    """When the next round comes, in words."""
    w = settings.watch
    if due.fired and due.wait_s > 0:
        return (f"due ({'; '.join(due.fired)}), not before "
                f"{time.strftime('%H:%M:%S', time.localtime(now + due.wait_s))} (watch.min_gap_s).")
    if due.fired:
        return f"due now ({'; '.join(due.fired)})."
    waits = []
    if w.new_runs:
        waits.append(f"{w.new_runs - due.new_runs} more chat runs ({due.new_runs}/{w.new_runs})")
    if w.new_feedback_pairs:
        waits.append(f"{w.new_feedback_pairs - due.new_pairs} more feedback pairs "
                     f"({due.new_pairs}/{w.new_feedback_pairs})")
    if w.interval_s and due.last_start is not None:
        waits.append(f"at {time.strftime('%m-%d %H:%M', time.localtime(due.last_start + w.interval_s))} (interval)")
    return " or ".join(waits) + "." if waits else "never (every trigger is off)."
