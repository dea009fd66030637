"""Unattended rounds, time-compressed: triggers, the lock, the CPU policy, rollback after promotion, retention,
status and history, and resuming a round killed with SIGKILL.

No model is involved: ``StagedImprover`` is the real ``Improver`` (rounds, checkpoints, resume, promotion in the
registry) whose model-bound stages (prompts, rollouts, critic, pairs, DPO training, gate evaluation) are
stand-ins that write what the real stages write; ``smoke`` stands in for the smoke-suite evaluation.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from strop.config import load_settings
from strop.errors import StropError
from strop.files import append_line, read_lines
from strop.serving.adapters import ADAPTER_META, Registry
from strop.serving.endpoint import Endpoint
from strop.training.history import history_chart, round_rows
from strop.training.loop import Improver, Round
from strop.training.watch import PausingDisplay, Watcher, idle, round_settings, triggers
from strop.training.watch_cli import status_data
from strop.trajectories import StepTiming, Trajectory, TrajectoryStore
from tests.conftest import REPO

NOWHERE = Endpoint("http://127.0.0.1:9/v1", "model", "EMPTY", managed=False)


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class StagedImprover(Improver):
    """The real round machinery; the stages that need a model write what the real ones write."""

    gate_promotes = True
    block_in_training: Path | None = None  # a marker file: training signals it started, then never ends

    def __init__(self, settings, display=None, clock=time.time):
        super().__init__(settings, NOWHERE, display)
        self.clock = clock
        self.calls: list[str] = []

    def collect_prompts(self, rnd):
        self.calls.append("prompts")
        (rnd.dir / "prompts.jsonl").write_text('{"id": "p1"}\n')
        return {"prompts": 1, "by_source": {"suite": 1}, "dropped_as_eval_cases": 0}

    def rollouts(self, rnd):
        self.calls.append("rollouts")
        for k in range(2):
            t = Trajectory("q", [], "answered", scenario="improve:math", created_at=self.clock())
            self.store.append(t)
            rnd.append("rollouts.jsonl", {"prompt": "p1", "k": k, "trajectory": t.id})
        return {"episodes": 2, "adapter": self.registry.active, "passed": 1}

    def critic(self, rnd):
        self.calls.append("critic")
        return {"scored": 2, "mean_score": 0.5, "critic": "test"}

    def pairs(self, rnd):
        self.calls.append("pairs")
        chosen, rejected = (r["trajectory"] for r in rnd.lines("rollouts.jsonl"))
        append_line(rnd.dir / "pairs.jsonl", {"prompt": [], "chosen": [], "rejected": [], "provenance": {
            "source": "critic", "chosen_trajectory": chosen, "rejected_trajectory": rejected}})
        return {"pairs": 1, "human": 0, "no_margin": 0}

    def train(self, rnd):
        self.calls.append("train")
        if self.block_in_training:
            self.block_in_training.write_text("training")
            time.sleep(600)
        name = self.registry.next_name()
        folder = self.settings.adapters_dir / name
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"\0" * 1024)
        (folder / ADAPTER_META).write_text(json.dumps({"name": name, "created_at": self.clock(), "round": rnd.number,
                                                       "parent": self.registry.active}))
        return {"adapter": name, "parent": self.registry.active, "metrics": {}, "pairs": {"train": 1}, "curves": ""}

    def gate(self, rnd):
        self.calls.append("gate")
        candidate = rnd.result("train")["adapter"]
        rate = 0.7 if self.gate_promotes else 0.4
        return {"promote": self.gate_promotes, "reason": "stand-in verdict", "candidate": candidate,
                "current": self.registry.active, "suites": [
                    {"suite": "math", "current": 0.5, "candidate": rate, "diff": rate - 0.5, "ci": [0, 0.4],
                     "cases": 10}]}


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """Time that tests move forward; the registry stamps promotions and rollbacks with it too."""
    fake = Clock()
    monkeypatch.setattr("strop.serving.adapters.time", SimpleNamespace(time=fake))
    return fake


def make_settings(state: Path, **watch):
    return load_settings(state_dir=state, watch={"policy": "full", "new_runs": 4, "new_feedback_pairs": 0,
                                                 "min_gap_s": 600, "live_min_runs": 4, "live_window": 6,
                                                 "live_max_increase": 0.2, **watch},
                         retention={"keep_adapters": 1, "keep_rounds": 1, "trajectory_days": 1})


def chat(store: TrajectoryStore, clock: Clock, n: int, adapter: str | None = None, status: str = "answered",
         tool_error: bool = False) -> list[Trajectory]:
    runs = []
    for _ in range(n):
        steps = [StepTiming("tool", "calculator", 1.0, error="Error: bad" if tool_error else None)]
        t = Trajectory("hello", [], status, adapter=adapter, steps=steps, created_at=clock())
        store.append(t)
        runs.append(t)
        clock.sleep(1)
    return runs


def watcher_for(settings, clock: Clock, smoke_passes: dict[str, bool] | None = None):
    improvers: list[StagedImprover] = []
    smoke_calls: list[tuple] = []

    def make(round_settings_, display):
        improvers.append(StagedImprover(round_settings_, display, clock))
        return improvers[-1]

    def smoke(adapter, previous):  # stands in for the smoke suite run with both adapters
        smoke_calls.append((adapter, previous))
        passed = (smoke_passes or {}).get(adapter, True)
        return {"pass": passed, "reason": "smoke: stand-in" + ("" if passed else " worse on smoke"),
                "suites": [{"suite": "smoke", "current": 0.6, "candidate": 0.6 if passed else 0.2, "cases": 7}]}

    watcher = Watcher(settings, make, smoke=smoke, clock=clock, sleep=clock.sleep)
    return watcher, improvers, smoke_calls


def test_triggers_count_people_runs_and_feedback_pairs_since_the_last_round(tmp_path, clock):
    settings = make_settings(tmp_path, new_feedback_pairs=2, interval_s=3600)
    store = TrajectoryStore(settings.trajectories_path)
    first = triggers(settings, store, clock())
    assert first.fired == ["interval of 3600 s (watch.interval_s)"] and first.due  # no round yet: interval due
    settings = make_settings(tmp_path, new_feedback_pairs=2)
    chat(store, clock, 3)
    store.append(Trajectory("q", [], "answered", scenario="smoke", created_at=clock()))  # evaluations do not count
    append_line(settings.state_dir / "feedback" / "pairs.jsonl", {"provenance": {"source": "human"}})
    due = triggers(settings, store, clock())
    assert (due.new_runs, due.new_pairs, due.due) == (3, 1, False)
    append_line(settings.state_dir / "feedback" / "pairs.jsonl", {"provenance": {"source": "human"}})
    assert triggers(settings, store, clock()).fired == ["2 new feedback pairs (watch.new_feedback_pairs = 2)"]


def test_rounds_run_on_triggers_and_bad_promotions_are_rolled_back(tmp_path, clock):
    settings = make_settings(tmp_path)
    watcher, improvers, smoke_calls = watcher_for(settings, clock, smoke_passes={"v2": False})
    store, registry = watcher.store, watcher.registry
    append_line(settings.state_dir / "feedback" / "pairs.jsonl", {"provenance": {"source": "human"}})
    feedback_source = chat(store, clock, 1)[0]
    append_line(settings.state_dir / "feedback" / "pairs.jsonl",
                {"provenance": {"source": "human", "rejected_trajectory": feedback_source.id}})

    assert "round" not in watcher.once()  # 1 of 4 chat runs: nothing due
    assert not list(settings.improve_dir.glob("round-*"))

    chat(store, clock, 4)  # the base model's runs: the live baseline
    report = watcher.once()
    assert report["round"]["promote"]["promoted"] == "v1" and registry.active == "v1"
    assert smoke_calls == [("v1", None)]
    assert report["safety"]["live"]["state"] == "watching"
    assert "round" not in watcher.once()  # idempotent: nothing new since the round started

    clock.sleep(60)
    chat(store, clock, 4, adapter="v1", status="budget_exhausted")
    report = watcher.once()
    assert "round" not in report and 0 < report["triggers"].wait_s <= 600  # due, but within watch.min_gap_s
    assert registry.active is None and report["safety"]["state"] == "rolled back"
    reason = registry.history[-1]["reason"]
    assert registry.history[-1]["event"] == "rollback" and "runs out of step budget 100% vs 0% with base" in reason

    clock.sleep(600)
    report = watcher.once()  # the 4 runs since round 1 started fire the trigger once the gap has passed
    assert report["round"]["round"] == 2 and report["round"]["promote"]["promoted"] == "v2"
    assert smoke_calls[-1] == ("v2", None) and registry.active is None  # the smoke check failed: back to base
    assert "worse on smoke" in registry.history[-1]["reason"]

    # retention: keep_adapters = 1 and keep_rounds = 1, neither v1 nor v2 is active or a rollback target
    assert [a.name for a in registry.adapters()] == ["v2"]
    assert (settings.adapters_dir / "v1" / "pruned.json").exists()
    assert not (settings.adapters_dir / "v1" / "adapter_model.safetensors").exists()
    assert registry.next_name() == "v3"  # a pruned name is never reused
    round1, round2 = sorted(settings.improve_dir.glob("round-*"))
    assert not (round1 / "rollouts.jsonl").exists() and (round1 / "gate.done").exists()
    assert (round2 / "rollouts.jsonl").exists() and (round2 / "pairs.jsonl").exists()

    kept_round = {r["trajectory"] for r in read_lines(round2 / "rollouts.jsonl")}
    clock.sleep(2 * 86400)  # everything is now older than retention.trajectory_days
    pruned = watcher.once()["pruned"]
    left = {tid for tid, _ in store.ages()}
    assert left == kept_round | {feedback_source.id}, "only what a kept round or human feedback points to stays"
    assert pruned["trajectories"] == 4 + 4 + 2  # the base and v1 chat runs, round 1's rollouts
    archived = [json.loads(line) for path in (settings.state_dir / "archive").glob("*.jsonl.gz")
                for line in gzip.decompress(path.read_bytes()).decode().splitlines()]
    assert len(archived) == pruned["trajectories"] and not {a["id"] for a in archived} & left

    rows = round_rows(settings)
    assert [r.rolled_back is not None for r in rows] == [True, True]
    assert "rolled back: live:" in rows[0].outcome and "rolled back: smoke:" in rows[1].outcome
    status = status_data(settings)
    assert status["active"] is None and status["rounds"][1]["gate_candidate"] == pytest.approx(0.7)
    chart = history_chart(settings, rows, tmp_path / "history.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_refused_candidate_is_not_promoted_and_a_good_one_is_confirmed(tmp_path, clock):
    settings = make_settings(tmp_path)
    watcher, improvers, _ = watcher_for(settings, clock)
    chat(watcher.store, clock, 4)
    watcher.once()
    chat(watcher.store, clock, 6, adapter="v1")  # as healthy as the base model's runs
    assert watcher.once()["safety"]["state"] == "confirmed" and watcher.registry.active == "v1"
    StagedImprover.gate_promotes = False
    try:
        clock.sleep(700)
        report = watcher.once()
    finally:
        StagedImprover.gate_promotes = True
    assert report["round"]["promote"]["promoted"] is None and watcher.registry.active == "v1"
    assert round_rows(settings)[-1].outcome == "kept the active adapter: stand-in verdict"


def test_two_invocations_never_run_two_rounds(tmp_path, clock):
    settings = make_settings(tmp_path)
    first, _, _ = watcher_for(settings, clock)
    second, improvers, _ = watcher_for(settings, clock)
    chat(first.store, clock, 4)
    with first.locked():  # a round in progress in another process holds this lock
        assert second.once() == {"busy": True}
    assert not improvers and not list(settings.improve_dir.glob("round-*"))


def test_the_policy_lowers_training_threads_and_waits_for_idle(tmp_path, clock):
    settings = make_settings(tmp_path, policy="idle", idle_s=300, max_load=1000, train_threads=1)
    assert round_settings(settings).train.threads == 1
    assert round_settings(make_settings(tmp_path)).train.threads == settings.train.threads
    store = TrajectoryStore(settings.trajectories_path)
    chat(store, clock, 1)
    ready, why = idle(settings, store, clock())
    assert not ready and "watch.idle_s = 300" in why
    watcher, _, _ = watcher_for(settings, clock)
    assert isinstance(watcher.display, PausingDisplay)
    began = clock()
    watcher.display.stage("train")  # pauses (sleeping on the fake clock) until 300 s without chats
    assert clock() - began >= 299


def test_bad_watch_settings_name_the_field(tmp_path):
    with pytest.raises(StropError) as caught:
        load_settings(state_dir=tmp_path, watch={"policy": "sometimes"})
    assert "watch.policy" in caught.value.message and "STROP_WATCH__POLICY" in caught.value.message


KILLED_ROUND = """
import sys
from pathlib import Path
from tests.training.test_watch import Clock, StagedImprover, make_settings, watcher_for
StagedImprover.block_in_training = Path(sys.argv[2])
watcher, _, _ = watcher_for(make_settings(Path(sys.argv[1])), Clock())
with watcher.locked():
    watcher.run_round("by test")
"""


def test_a_round_killed_with_sigkill_resumes_at_the_next_invocation(tmp_path, clock):
    marker = tmp_path / "training-started"
    state = tmp_path / "state"
    child = subprocess.Popen([sys.executable, "-c", KILLED_ROUND, str(state), str(marker)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 60
    while not marker.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the unattended round never reached training"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    settings = make_settings(state, new_runs=1000)  # no trigger fires: resuming needs none
    watcher, improvers, _ = watcher_for(settings, clock)
    report = watcher.once()
    assert report["round"]["round"] == 1 and report["round"]["promote"]["promoted"] == "v1"
    assert improvers[0].calls == ["train", "gate"]  # finished stages are not run again
    assert json.loads((state / "improve" / "round-0001" / "trigger.json").read_text())["trigger"] == "by test"
    assert len(list((state / "improve").glob("round-*"))) == 1 and Registry(settings.adapters_dir).active == "v1"


def test_once_from_cron_with_nothing_due_exits_quietly_without_starting_a_server(tmp_path):
    (tmp_path / "strop.toml").write_text("")  # defaults: 50 chat runs or 5 feedback pairs start a round
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STROP_")}, "STROP_STATE_DIR": str(tmp_path),
           "STROP_SERVE__PORT": "9", "STROP_CONFIG": str(tmp_path / "strop.toml")}
    run = subprocess.run([sys.executable, "-m", "strop", "improve", "--once"], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Next round: 50 more chat runs (0/50)" in run.stderr and "policy nice" in run.stderr
    assert not (tmp_path / "serve").exists()
    status = json.loads(subprocess.run([sys.executable, "-m", "strop", "status", "--json"], capture_output=True,
                                       text=True, env=env, cwd=REPO, timeout=120).stdout)
    assert status["watcher"]["doing"] == "idle" and status["rounds"] == [] and status["triggers"]["new_runs"] == 0


@pytest.mark.parametrize(("statuses", "passes"), [(["passed", "failed"], True), (["passed", "timeout"], False)])
def test_in_merged_mode_the_smoke_check_runs_only_the_promoted_model(tmp_path, clock, statuses, passes):
    settings = make_settings(tmp_path)
    assert settings.serve.adapter_mode == "merged"
    watcher, _, _ = watcher_for(settings, clock)
    asked = []

    class Checker:  # stands in for the smoke suite's Improver: records which sides it evaluated
        def gate_run(self, folder, role, adapter):
            asked.append((role, adapter))
            return SimpleNamespace(id="run-new", records=lambda: [{"status": s} for s in statuses])

        def new_gate(self):
            return SimpleNamespace(earlier_run=lambda adapter: None)  # no smoke run of the previous model kept

    verdict = watcher.merged_smoke_check(Checker(), Round(tmp_path / "smoke-v2"), "v2", "v1")
    assert asked == [("new", "v2")]  # the previous model is never asked for: it is not served
    assert verdict["pass"] is passes and verdict["runs"] == {"new": "run-new"}
