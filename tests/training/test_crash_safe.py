"""A round that crashes, fails every time or is killed while training: the watcher keeps guarding the active
adapter, `strop improve --abandon` ends the round, a resumed train stage never trains a second adapter.

No model is involved: ``StagedImprover`` (tests/training/test_watch.py) is the real ``Improver`` whose
model-bound stages are stand-ins; here ``train_adapter`` stands in for DPO training (it saves an adapter
folder the way the real one does: a partial folder renamed when complete).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from strop.cli import app
from strop.errors import StropError
from strop.serving.adapters import ADAPTER_META, Registry
from strop.training.history import round_rows
from strop.training.loop import Improver
from strop.training.watch import Watcher, abandon_unfinished, backoff, keep_watching
from tests.training.test_watch import NOWHERE, Clock, StagedImprover, chat, make_settings, watcher_for


@pytest.fixture(autouse=True)
def registry_only_promotion(monkeypatch):
    """Promotion without a server: stands in for merging and swapping the served model; the registry records it."""
    def activate(settings, endpoint, name, event, reason, *more, **options):
        Registry(settings.adapters_dir).set_active(name, event, reason)

    monkeypatch.setattr("strop.training.loop.activate", activate)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("strop.serving.adapters.time", SimpleNamespace(time=fake))
    return fake


class Killed(BaseException):
    """Stands in for SIGKILL inside one process: nothing after it runs, no handler catches it."""


def save_adapter(out: Path, meta: dict) -> dict:
    """What train_adapter leaves once it returns: a complete folder, renamed into place."""
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)  # what a killed run left
    work.mkdir(parents=True)
    (work / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (work / ADAPTER_META).write_text(json.dumps(meta))
    work.rename(out)
    return meta


def test_a_train_stage_killed_after_saving_its_adapter_reuses_it(tmp_path, monkeypatch):
    settings = make_settings(tmp_path)
    trained: list[str] = []
    kill_after_saving = [True]

    def train_adapter(pairs, base, out, config, *, parent=None, progress=None, extra_meta=None):
        trained.append(out.name)
        meta = save_adapter(out, {"name": out.name, "created_at": time.time(), "parent": None,
                                  "metrics": {"loss": 0.5}, "pairs": {"train": 8}, **(extra_meta or {})})
        if kill_after_saving.pop():
            raise Killed  # between the rename into place and train.done
        return meta

    monkeypatch.setattr("strop.training.dpo.train_adapter", train_adapter)
    monkeypatch.setattr("strop.training.loop.training_base", lambda *args, **kwargs: (tmp_path, None))
    improver = Improver(settings, NOWHERE)
    rnd = improver.current_round()
    with pytest.raises(Killed):
        improver.train(rnd)
    kill_after_saving.append(False)
    result = improver.train(rnd)  # the resumed stage

    assert trained == ["v1"], "the saved adapter is reused, not trained a second time"
    assert result["adapter"] == "v1" and result["metrics"] == {"loss": 0.5}
    assert [a.name for a in Registry(settings.adapters_dir).adapters()] == ["v1"]


def test_a_train_stage_killed_while_training_trains_the_same_name_again(tmp_path, monkeypatch):
    settings = make_settings(tmp_path)
    trained: list[str] = []

    def train_adapter(pairs, base, out, config, *, parent=None, progress=None, extra_meta=None):
        trained.append(out.name)
        if len(trained) == 1:
            out.with_name(f".{out.name}.partial").mkdir(parents=True)
            raise Killed  # mid-training: only the partial folder exists
        return save_adapter(out, {"name": out.name, "created_at": time.time(), "parent": None, "metrics": {},
                                  "pairs": {"train": 8}})

    monkeypatch.setattr("strop.training.dpo.train_adapter", train_adapter)
    monkeypatch.setattr("strop.training.loop.training_base", lambda *args, **kwargs: (tmp_path, None))
    improver = Improver(settings, NOWHERE)
    rnd = improver.current_round()
    with pytest.raises(Killed):
        improver.train(rnd)
    assert improver.train(rnd)["adapter"] == "v1" and trained == ["v1", "v1"]
    assert [a.name for a in Registry(settings.adapters_dir).adapters()] == ["v1"]
    assert not (settings.adapters_dir / ".v1.partial").exists()


class FailingCritic(StagedImprover):
    """A round whose critic fails every time (its judge server is gone, say)."""

    def critic(self, rnd):
        self.calls.append("critic")
        raise RuntimeError("judge server unreachable")


def stuck_watcher(settings, clock):
    improvers: list[StagedImprover] = []

    def make(round_settings_, display):
        improvers.append(FailingCritic(round_settings_, display, clock))
        return improvers[-1]

    return Watcher(settings, make, smoke=lambda a, p: {"pass": True, "reason": "smoke: stand-in", "suites": []},
                   clock=clock, sleep=clock.sleep), improvers


def promote_v1(settings, clock):
    """Round 1 promotes v1 over the base model's chat runs (the live baseline)."""
    healthy, _, _ = watcher_for(settings, clock)
    chat(healthy.store, clock, 4)
    assert healthy.once()["round"]["promote"]["promoted"] == "v1"
    return healthy


def test_a_stuck_round_does_not_stop_rollback_checks_or_retention(tmp_path, clock):
    settings = make_settings(tmp_path)
    promote_v1(settings, clock)
    clock.sleep(700)
    chat(Watcher(settings, None).store, clock, 4, adapter="v1", status="budget_exhausted")  # v1 does badly in use

    watcher, improvers = stuck_watcher(settings, clock)
    first = watcher.once()
    assert first["round_failed"]["round"] == 2 and "judge server unreachable" in first["round_failed"]["error"]
    assert first["safety"]["state"] == "rolled back" and watcher.registry.active is None
    assert "pruned" in first
    second = watcher.once()  # resumed, fails again; the look still ends normally
    assert second["round_failed"]["times"] == 2 and improvers[-1].calls == ["prompts", "rollouts", "critic", "critic"]
    failures = [e for e in watcher.events() if e["event"] == "round-failed"]
    assert len(failures) == 2 and "RuntimeError" in failures[0]["traceback"]


def test_abandon_ends_a_round_that_fails_every_time_and_keeps_the_state(tmp_path, clock, monkeypatch):
    settings = make_settings(tmp_path)
    promote_v1(settings, clock)
    clock.sleep(700)
    watcher, _ = stuck_watcher(settings, clock)
    chat(watcher.store, clock, 4, adapter="v1")
    assert watcher.once()["round_failed"]["round"] == 2
    round2 = settings.improve_dir / "round-0002"
    rollouts = (round2 / "rollouts.jsonl").read_text()
    registry_before = (settings.adapters_dir / "registry.json").read_text()

    monkeypatch.setenv("STROP_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["improve", "--abandon", "--reason", "judge server retired"])
    assert result.exit_code == 0, result.output
    assert "Round 2 abandoned at critic" in result.output

    row = round_rows(settings)[-1]
    assert row.number == 2 and row.outcome == "stopped: abandoned: judge server retired"
    assert (round2 / "rollouts.jsonl").read_text() == rollouts, "what the round wrote stays"
    assert (settings.adapters_dir / "registry.json").read_text() == registry_before
    assert [e["event"] for e in watcher.events()][-1] == "abandon"
    with pytest.raises(StropError, match="No unfinished round"):
        abandon_unfinished(settings, "again")

    clock.sleep(700)
    chat(watcher.store, clock, 4, adapter="v1")
    healthy, _, _ = watcher_for(settings, clock)
    assert healthy.once()["round"]["round"] == 3, "the next round starts afresh"


def test_abandon_refuses_while_a_round_runs(tmp_path, clock):
    settings = make_settings(tmp_path)
    watcher, _, _ = watcher_for(settings, clock)
    (settings.improve_dir / "round-0001").mkdir(parents=True)
    with watcher.locked(), pytest.raises(StropError, match="A round is running"):
        abandon_unfinished(settings, "too early")
    assert not (settings.improve_dir / "round-0001" / "prompts.done").exists()


class Flaky:
    """A watcher whose looks raise, in turn, the given exceptions (None: a normal look)."""

    def __init__(self, settings, clock, outcomes):
        self.settings, self.clock, self.outcomes = settings, clock, list(outcomes)
        self.logged: list[dict] = []
        self.slept: list[float] = []

    def once(self):
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return {"at": self.clock()}

    def event(self, kind, **fields):
        self.logged.append({"event": kind, **fields})

    def sleep(self, seconds):
        self.slept.append(seconds)


def test_watch_survives_any_exception_of_one_look_and_backs_off(tmp_path, clock):
    settings = make_settings(tmp_path, poll_s=60)
    flaky = Flaky(settings, clock, [KeyError("heartbeat"), OSError("disk full"), ValueError("bad json"), None])
    warnings: list[str] = []
    keep_watching(flaky, show=lambda report: None, warn=warnings.append, looks=4)
    assert flaky.slept == [120, 240, 480, 60], "doubling after each failed look, the normal pace after a good one"
    assert [e["error"] for e in flaky.logged] == ["KeyError: 'heartbeat'", "OSError: disk full",
                                                  "ValueError: bad json"]
    assert "Traceback" in flaky.logged[0]["traceback"] and "next look in 120 s" in warnings[0]
    assert backoff(60, 20) == 3600


def test_once_from_cron_reports_a_failed_round_after_the_checks(tmp_path, clock, monkeypatch):
    settings = make_settings(tmp_path)
    promote_v1(settings, clock)
    clock.sleep(700)
    watcher, _ = stuck_watcher(settings, clock)
    chat(watcher.store, clock, 4, adapter="v1")
    monkeypatch.setattr("strop.training.watch_cli.Watcher", lambda *a, **k: watcher)
    monkeypatch.setenv("STROP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("STROP_WATCH__POLICY", "full")
    result = CliRunner().invoke(app, ["improve", "--once"])
    assert result.exit_code != 0 and "Round 2 failed" in result.output and "--abandon" in result.output
    assert json.loads((settings.improve_dir / "watch" / "heartbeat.json").read_text())["doing"] == "idle"
