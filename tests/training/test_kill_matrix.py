"""kill -9 matrix: a round killed with SIGKILL at a random moment of each stage, then resumed, ends as if it had
never been killed: no record lost or written twice, one adapter trained, the registry consistent, every listed
adapter complete, and no process of the killed round left.

The kill is real (SIGKILL to the round's whole process group, which also holds a training worker), the resume
is the real ``Improver.run_round``, and so are the round's checkpoints, the train stage (adapter name recorded
before training, reuse of a saved adapter) and the promote stage (``activate``, the registry). Stand-ins, each
writing what its real stage writes, one record at a time with short pauses so a kill lands mid-stage: prompt
collection, rollouts (episodes against a model), critic scores (the LLM judge), pair building, DPO training
(``train_adapter``: a partial folder renamed when complete, with a worker subprocess) and the gate's two
evaluation runs. ``STROP_KILL_MATRIX_REPEATS`` runs the matrix more times (one kill per stage each time).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strop.config import load_settings
from strop.files import read_lines, write_atomic
from strop.serving.adapters import ADAPTER_META, Registry
from strop.training.loop import STAGES, Display, Improver
from strop.trajectories import Trajectory, TrajectoryStore
from tests.training.test_watch import NOWHERE

PROMPTS, SAMPLES, GATE_CASES = 4, 3, 6
CHUNK, CHUNKS = 4096, 6
PAUSE = 0.02  # between two records of a stand-in stage: the kill lands among them
WORKER_TAG = "strop-kill-matrix-worker"
REPEATS = int(os.environ.get("STROP_KILL_MATRIX_REPEATS", "1"))


def settings_for(state: Path):
    return load_settings(state_dir=state, train={"min_pairs": 1})


class Marks(Display):
    """Marks the start of each stage in a file, so the killer knows which stage is running."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def stage(self, name: str, detail: str = "") -> None:
        if not detail:
            (self.folder / f"began-{name}").write_text(str(time.time()))


class KillableRound(Improver):
    """The real round; the model-bound stages are stand-ins that resume the way the real ones do."""

    def __init__(self, settings, display=None):
        super().__init__(settings, NOWHERE, display)

    def collect_prompts(self, rnd):  # stands in for drawing suite, chat and synthetic prompts
        time.sleep(PAUSE * 8)
        rows = [{"id": f"p{i}", "text": f"question {i}"} for i in range(PROMPTS)]
        write_atomic(rnd.dir / "prompts.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        time.sleep(PAUSE * 8)  # written, not yet marked done
        return {"prompts": PROMPTS}

    def rollouts(self, rnd):  # stands in for episodes against the model; resumes by (prompt, k) as the real one
        done = {(r["prompt"], r["k"]) for r in rnd.lines("rollouts.jsonl")}
        for prompt in (f"p{i}" for i in range(PROMPTS)):
            for k in range(SAMPLES):
                if (prompt, k) in done:
                    continue
                t = Trajectory(f"{prompt} #{k}", [], "answered", scenario="improve:kill", answer=str(k))
                self.store.append(t)
                rnd.append("rollouts.jsonl", {"prompt": prompt, "k": k, "trajectory": t.id})
                time.sleep(PAUSE)
        return {"episodes": len(rnd.lines("rollouts.jsonl"))}

    def critic(self, rnd):  # stands in for the LLM judge's scores, appended one by one
        scored = {r["trajectory"] for r in rnd.lines("scores.jsonl")}
        for row in rnd.lines("rollouts.jsonl"):
            if row["trajectory"] not in scored:
                rnd.append("scores.jsonl", {"prompt": row["prompt"], "trajectory": row["trajectory"],
                                            "score": row["k"] / SAMPLES})
                time.sleep(PAUSE)
        return {"scored": len(rnd.lines("scores.jsonl"))}

    def pairs(self, rnd):  # stands in for build_pairs: best against worst episode of each prompt
        time.sleep(PAUSE * 8)
        best: dict[str, list[dict]] = {}
        for row in rnd.lines("scores.jsonl"):
            best.setdefault(row["prompt"], []).append(row)
        made = [{"prompt": p, "chosen": max(rows, key=lambda r: r["score"])["trajectory"],
                 "rejected": min(rows, key=lambda r: r["score"])["trajectory"]} for p, rows in sorted(best.items())]
        write_atomic(rnd.dir / "pairs.jsonl", "".join(json.dumps(p) + "\n" for p in made))
        time.sleep(PAUSE * 8)
        return {"pairs": len(made), "human": 0}

    def gate(self, rnd):  # stands in for the gate's two evaluation runs, resumable case by case
        candidate = rnd.result("train")["adapter"]
        for side in ("candidate", "current"):
            path = f"gate-{side}.jsonl"
            done = {r["case"] for r in rnd.lines(path)}
            for case in range(GATE_CASES):
                if case not in done:
                    rnd.append(path, {"case": case, "passed": side == "candidate" or case % 2 == 0})
                    time.sleep(PAUSE)
        return {"promote": True, "reason": "stand-in verdict", "candidate": candidate,
                "current": self.registry.active, "suites": []}


def train_adapter(pairs_path, base, out, config, *, parent=None, progress=None, extra_meta=None):
    """Stands in for DPO training: like the real one, trains into ``.<name>.partial`` (cleared first) with a
    worker process, and renames the folder into place once complete."""
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", WORKER_TAG, str(out)])
    try:
        with (work / "adapter_model.safetensors").open("wb") as fh:
            for _ in range(CHUNKS):
                fh.write(b"\1" * CHUNK)
                fh.flush()
                time.sleep(PAUSE)
        meta = {"name": out.name, "created_at": time.time(), "parent": parent.name if parent else None,
                "metrics": {"loss": 0.1}, "pairs": {"train": PROMPTS}, **(extra_meta or {})}
        (work / ADAPTER_META).write_text(json.dumps(meta))
        work.rename(out)
        time.sleep(PAUSE * 6)  # saved, train.done not yet written: the window a resumed stage must not retrain
        return meta
    finally:
        worker.kill()
        worker.wait()


def stand_in_training(state: Path, setattr_=setattr) -> None:
    import strop.training.dpo
    import strop.training.loop

    setattr_(strop.training.dpo, "train_adapter", train_adapter)
    setattr_(strop.training.loop, "training_base", lambda *args, **kwargs: (state, None))


def slow_promotion() -> None:
    """The real ``activate`` with pauses before and after it (a swap of the served model takes time), so a kill
    can land before the registry switch or between it and ``promote.done``."""
    import strop.training.loop

    activate = strop.training.loop.activate

    def paused(*args, **kwargs):
        time.sleep(0.1)
        activate(*args, **kwargs)
        time.sleep(0.2)

    strop.training.loop.activate = paused


def killed_round(state: Path) -> None:
    """The round to kill, in a forked child (no second start-up of Python) leading its own process group."""
    os.setsid()
    stand_in_training(state)
    slow_promotion()
    improver = KillableRound(settings_for(state), Marks(state / "marks"))
    with improver.locked():
        improver.run_round()


def kill_in_stage(state: Path, stage: str, rng: random.Random) -> str:
    """Run a round in a child process and SIGKILL its process group at a random moment after ``stage`` began;
    returns the stage that was running when the kill landed."""
    child = multiprocessing.get_context("fork").Process(target=killed_round, args=(state,))
    child.start()
    marker = state / "marks" / f"began-{stage}"
    deadline = time.time() + 60
    while not marker.exists() and child.is_alive() and time.time() < deadline:
        time.sleep(0.01)
    assert marker.exists(), f"the round never reached {stage}"
    time.sleep(rng.uniform(0, 0.25))
    assert child.is_alive(), "the round ended before the kill"
    os.killpg(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    folder = state / "improve" / "round-0001"
    return next(s for s in STAGES if not (folder / f"{s}.done").exists())


def leftover_processes(state: Path, grace_s: float = 2.0) -> list[str]:
    """Processes whose command line names the state folder (a training worker, a server started for it), after
    up to ``grace_s`` for a killed one to go (a signal is delivered asynchronously)."""
    deadline = time.time() + grace_s
    while (found := named_processes(state)) and time.time() < deadline:
        time.sleep(0.05)
    return found


def named_processes(state: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(state) in cmdline and int(proc.name) != os.getpid():
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def check_resumed(state: Path) -> None:
    settings = settings_for(state)
    [folder] = sorted(settings.improve_dir.glob("round-*"))
    assert all((folder / f"{stage}.done").exists() for stage in STAGES)

    rollouts = read_lines(folder / "rollouts.jsonl")
    keys = [(r["prompt"], r["k"]) for r in rollouts]
    assert sorted(keys) == sorted((f"p{i}", k) for i in range(PROMPTS) for k in range(SAMPLES)), "lost or doubled"
    store = TrajectoryStore(settings.trajectories_path)
    assert all(store.get(r["trajectory"]).id == r["trajectory"] for r in rollouts)
    scored = [r["trajectory"] for r in read_lines(folder / "scores.jsonl")]
    assert sorted(scored) == sorted(r["trajectory"] for r in rollouts)
    assert len(read_lines(folder / "pairs.jsonl")) == PROMPTS
    for side in ("candidate", "current"):
        assert sorted(r["case"] for r in read_lines(folder / f"gate-{side}.jsonl")) == list(range(GATE_CASES))

    registry = Registry(settings.adapters_dir)
    assert [a.name for a in registry.adapters()] == ["v1"], "one adapter, not a second version"
    assert sorted(p.name for p in settings.adapters_dir.iterdir()) == ["registry.json", "v1"], "no partial left"
    weights = settings.adapters_dir / "v1" / "adapter_model.safetensors"
    assert weights.stat().st_size == CHUNK * CHUNKS, "every adapter listed is complete"
    assert registry.active == "v1" and registry.previous() is None
    assert [(e["event"], e["adapter"], e["previous"]) for e in registry.history] == [("promote", "v1", None)]
    assert json.loads((folder / "train.done").read_text())["adapter"] == "v1"
    assert json.loads((folder / "promote.done").read_text())["promoted"] == "v1"
    assert leftover_processes(state) == []


@pytest.mark.parametrize("repeat", range(REPEATS))
@pytest.mark.parametrize("stage", STAGES)
def test_a_round_killed_in_any_stage_resumes_without_loss_or_duplicates(tmp_path, monkeypatch, stage, repeat):
    rng = random.Random(f"{stage}-{repeat}")
    state = tmp_path / "state"
    killed_in = kill_in_stage(state, stage, rng)
    assert killed_in in STAGES[STAGES.index(stage):]
    assert leftover_processes(state) == [], "the kill took the round's worker with it"
    assert not (state / "improve" / "round-0001" / "promote.done").exists() or killed_in == "promote"

    stand_in_training(state, monkeypatch.setattr)
    improver = KillableRound(settings_for(state))
    with improver.locked():
        report = improver.run_round()
    assert report["round"] == 1
    check_resumed(state)
    print(f"kill in {stage} (landed in {killed_in}) survived")
