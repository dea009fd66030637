"""One self-improvement round: prompts -> rollouts -> critic -> pairs -> train -> gate -> promote.

Each stage writes its output under ``<state>/improve/round-NNNN/`` and then a ``<stage>.done`` file
(atomically); rerunning after a crash or kill skips finished stages and resumes the one in progress
(rollouts and critic scores are appended one at a time, the gate's evaluation runs resume). A lock
keeps two loops off one state folder. Nothing is promoted unless the gate says the candidate is not
worse on any gate suite beyond noise and better overall by ``improve.min_gain``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strop.aio import at_most
from strop.config import Settings
from strop.errors import StropError
from strop.feedback import FeedbackLog, checksum, question_of
from strop.files import append_line, exclusive, inside, read_lines, write_atomic
from strop.scenarios.generators import worked_problems
from strop.scenarios.graders import Contains
from strop.scenarios.runner import Evaluator
from strop.scenarios.runs import Run, RunStore, expected_seconds
from strop.scenarios.suite import Case
from strop.serving.adapters import ADAPTER_META, Registry
from strop.serving.endpoint import Endpoint
from strop.serving.policy import (
    OnDemand,
    activate,
    candidate_endpoint,
    current_gate_endpoint,
    ensure_loaded,
    rollout_endpoint,
    rolls_on_copy,
    training_base,
)
from strop.training.answers import ANSWERS, answer_pairs, sample_answers
from strop.training.critic import Critic, found_answer, informative
from strop.training.demonstrations import demonstration_pairs
from strop.training.gate import Gate, decide, run_ids
from strop.training.pairs import Scored, build_pairs
from strop.training.sources import SOURCES, Prompt, PromptSources, normal
from strop.trajectories import TrajectoryStore

STAGES = ("prompts", "rollouts", "critic", "pairs", "train", "gate", "promote")


class Display:
    """How a round shows itself; the CLI gives rich progress, tests keep the defaults (silent)."""

    def stage(self, name: str, detail: str = "") -> None: ...

    def progress(self, stage: str, done: int, total: int) -> None: ...

    def gate(self, run: Run, cases: dict[str, list[Case]]) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext(None)


@dataclass
class Round:
    """The folder of one round and its stage checkpoints."""

    dir: Path

    @property
    def number(self) -> int:
        return int(self.dir.name.split("-")[1])

    def done(self, stage: str) -> bool:
        return (self.dir / f"{stage}.done").exists()

    def result(self, stage: str) -> dict[str, Any]:
        return json.loads((self.dir / f"{stage}.done").read_text())

    def finish(self, stage: str, result: dict[str, Any]) -> dict[str, Any]:
        write_atomic(self.dir / f"{stage}.done", json.dumps(result, indent=2))
        return result

    @property
    def finished(self) -> bool:
        return self.done(STAGES[-1])

    def stage_minutes(self, began: float | None = None) -> dict[str, float]:
        """Minutes each stage finished after ``began`` (default: when the round's first file was written) took,
        from the times their checkpoints were written."""
        if began is None:  # the first prompts are written just before prompts.done (rollouts may append more)
            began = min((p.stat().st_mtime for p in self.dir.iterdir()), default=0.0)
        out = {}
        for at, stage in sorted((p.stat().st_mtime, p.stem) for p in self.dir.glob("*.done")):
            if at >= began:
                out[stage], began = round((at - began) / 60, 1), at
        return out

    def lines(self, name: str) -> list[dict[str, Any]]:
        """Records appended to ``name``; a line torn by a kill is dropped (its work is redone)."""
        return read_lines(self.dir / name)

    def append(self, name: str, record: dict[str, Any]) -> None:
        append_line(self.dir / name, record)


class Improver:
    """Runs rounds on one state folder against one serving endpoint."""

    def __init__(self, settings: Settings, endpoint: Endpoint, display: Display | None = None):
        self.settings = settings
        self.endpoint = endpoint
        self.display = display or Display()
        self.registry = Registry(settings.adapters_dir)
        self.store = TrajectoryStore(settings.trajectories_path)
        self.sources = PromptSources(settings, endpoint, self.store)
        self.critic_of = Critic(settings, endpoint, self.store, self.sources.suite)

    # -- rounds ------------------------------------------------------------------------------
    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Only one loop per state folder."""
        return exclusive(self.settings.improve_dir / ".lock",
                         StropError(f"Another `strop improve` is running on {self.settings.state_dir}.",
                                    fix="Wait for it to finish; a round is never run twice at once."))

    def current_round(self) -> Round:
        """The unfinished round to resume, or a new one."""
        rounds = sorted(self.settings.improve_dir.glob("round-*"))
        if rounds and not Round(rounds[-1]).finished:
            return Round(rounds[-1])
        folder = self.settings.improve_dir / f"round-{len(rounds) + 1:04d}"
        folder.mkdir(parents=True)
        return Round(folder)

    def run_round(self) -> dict[str, Any]:
        """Run (or resume) one round to its end; returns the round's report."""
        rnd = self.current_round()
        steps: dict[str, Callable[[Round], dict[str, Any]]] = {
            "prompts": self.collect_prompts, "rollouts": self.rollouts, "critic": self.critic,
            "pairs": self.pairs, "train": self.train, "gate": self.gate, "promote": self.promote}
        for stage in STAGES:
            if rnd.done(stage):
                continue
            self.display.stage(stage)
            result = steps[stage](rnd)
            rnd.finish(stage, result)
            if result.get("stop"):  # nothing to train or promote: the round ends here, state intact
                for later in STAGES[STAGES.index(stage) + 1:]:
                    rnd.finish(later, {"skipped": result["stop"]})
                break
        return self.report(rnd)

    def report(self, rnd: Round) -> dict[str, Any]:
        return {"round": rnd.number, "dir": str(rnd.dir),
                **{stage: rnd.result(stage) for stage in STAGES if rnd.done(stage)}}

    # -- prompts, rollouts, critic ------------------------------------------------------------
    def collect_prompts(self, rnd: Round) -> dict[str, Any]:
        solved = self.solved_suites(rnd)
        prompts, dropped = self.sources.collect(rnd.number, self.unsolved(solved),
                                                lambda text: self.display.stage("prompts", text))
        write_atomic(rnd.dir / "prompts.jsonl", "".join(json.dumps(p.__dict__) + "\n" for p in prompts))
        by_source = {s: sum(p.source == s for p in prompts) for s in SOURCES}
        result = {"prompts": len(prompts), "by_source": by_source, "dropped_as_eval_cases": dropped, "solved": solved}
        if not prompts:
            why = (f"the current policy passes every gate case of {', '.join(solved)} (improve.skip_solved)" if solved
                   else "no suite, chat or memory prompt to draw")
            result["stop"] = f"no prompts: {why}; nothing to learn this round"
        return result

    def solved_suites(self, rnd: Round) -> list[str]:
        """The suites the current policy passes every gate case of (``improve.skip_solved``): a round draws no
        prompts from them, as no candidate can gain there; the gate still runs them and refuses one worse on them.
        It asks the gate's current side for this, before the rollouts; the gate reuses that run."""
        suites = self.settings.improve.suites
        if not self.settings.improve.skip_solved or not suites:
            return []
        self.display.stage("prompts", "the current policy on the gate first: suites it passes entirely draw none")
        self.endpoint = ensure_loaded(self.settings, self.endpoint, self.registry.active)
        every_passed: dict[str, bool] = {}  # by suite name, as the gate's records name them
        for r in self.current_gate_run(rnd).records():
            every_passed[r["suite"]] = every_passed.get(r["suite"], True) and bool(r.get("passed"))
        return [name for name in suites if every_passed.get(self.sources.suite(name).name)]

    def unsolved(self, solved: list[str]) -> list[str]:
        """The suites a round draws train prompts from: ``improve.suites`` but the ``solved`` ones."""
        return [name for name in self.settings.improve.suites if name not in solved]

    def drawn_suites(self, rnd: Round) -> list[str]:
        """The suites ``rnd`` draws from: those its prompts stage did not find solved."""
        return self.unsolved(rnd.result("prompts").get("solved", []))

    def rollouts(self, rnd: Round) -> dict[str, Any]:
        """K sampled episodes per prompt with the active adapter, appended one by one; then more train cases, for
        the suites where too few prompts were informative, until enough are or ``draw_factor`` is spent."""
        self.endpoint = ensure_loaded(self.settings, self.endpoint, self.registry.active)
        with contextlib.ExitStack() as stack:  # a resumed stage with nothing left to sample starts no copy
            to = OnDemand(stack, lambda: rollout_endpoint(self.settings, self.endpoint,
                                                          lambda text: self.display.stage("rollouts", text)))
            while True:
                self.roll_out(rnd, self.prompts(rnd), to)
                prompts = self.prompts(rnd)
                self.critic_of.score(rnd, {p.id: p for p in prompts})
                found = informative(rnd, self.settings.improve.min_margin, self.settings.improve.pass_over_fail)
                # when the server failed every request, more prompts would fail alike
                failed = all_failed(rnd.lines("rollouts.jsonl"))
                extra = [] if failed else self.sources.more(
                    prompts, found, rnd.number, self.drawn_suites(rnd))
                if not extra:
                    break
                self.display.stage("rollouts", f"{len(extra)} more prompts: {len(found)} informative so far")
                for prompt in extra:
                    rnd.append("prompts.jsonl", prompt.__dict__)
            copy = to() is not self.endpoint if to.started else rolls_on_copy(self.settings, self.endpoint)
            dtype = self.settings.improve.rollout_dtype if copy else self.settings.serve.dtype
        records = rnd.lines("rollouts.jsonl")
        drawn = {name: sum(p.suite == name for p in prompts) for name in self.settings.improve.suites}
        result = {"episodes": len(records), "adapter": self.registry.active, "dtype": dtype,
                  "passed": sum(bool(r.get("passed")) for r in records if r.get("grades")),
                  "drawn": drawn, "informative": {name: sum(p.suite == name and p.id in found for p in prompts)
                                                  for name in drawn}}
        if all_failed(records):
            result["stop"] = f"every rollout failed to run: {failure_cause(records)}"
        return result

    def roll_out(self, rnd: Round, prompts: list[Prompt], endpoint: Callable[[], Endpoint]) -> None:
        """The episodes of ``prompts`` not yet in ``rollouts.jsonl``, sampled at ``endpoint()`` (asked for only when
        there are some)."""
        imp = self.settings.improve
        earlier = rnd.lines("rollouts.jsonl")
        done = {(r["prompt"], r["k"]) for r in earlier}
        todo = [(p, k) for p in prompts for k in range(imp.samples) if (p.id, k) not in done]
        if not todo:
            return
        expected = expected_seconds([*RunStore(self.settings.eval_dir).recent_records(), *earlier])

        def longest_first(item: tuple[Prompt, int]) -> float:  # a long episode started last would run alone
            suite, case = self.sources.case_of(item[0])
            return -expected(suite.name, case.id)

        todo.sort(key=longest_first)
        sampling = self.settings.sampling.model_copy(update={"temperature": imp.temperature})
        total, finished = len(prompts) * imp.samples, len(done)
        with Evaluator(self.settings, endpoint(), adapter=self.registry.active, store=self.store,
                       sampling=sampling, label="improve") as evaluator:
            for name in sorted({p.suite for p in prompts if p.suite and p.source == "suite"}):
                evaluator.prepare(self.sources.suite(name))  # memory suites answer from their own corpus

            async def one(prompt: Prompt, k: int) -> None:
                nonlocal finished
                record = await evaluator.episode(*self.sources.case_of(prompt), k)
                rnd.append("rollouts.jsonl", {"prompt": prompt.id, "k": k, **record})
                finished += 1
                self.display.progress("rollouts", finished, total)

            asyncio.run(at_most(imp.concurrency, (one(p, k) for p, k in todo)))

    def critic(self, rnd: Round) -> dict[str, Any]:
        prompts = {p.id: p for p in self.prompts(rnd)}
        result = self.critic_of.run(rnd, prompts)
        imp = self.settings.improve
        if imp.answer_samples:
            graded = [(r["prompt"], self.store.get(r["trajectory"])) for r in rnd.lines("rollouts.jsonl")
                      if r.get("trajectory") and not self.critic_of.label_free(prompts[r["prompt"]])]
            self.endpoint = ensure_loaded(self.settings, self.endpoint, self.registry.active)
            result["answer_calls_sampled"] = sample_answers(rnd, graded, self.endpoint, self.registry.active,
                                                            imp.answer_samples, imp.temperature, imp.concurrency)
        return result

    # -- pairs and training ------------------------------------------------------------------
    def pairs(self, rnd: Round) -> dict[str, Any]:
        prompts = {p.id: p for p in self.prompts(rnd)}
        evaluator = Evaluator(self.settings, self.endpoint, label="improve")
        groups: dict[str, list[Scored]] = {}
        imp = self.settings.improve
        for row in self.critic_of.scores(rnd):
            if row["score"] is None:
                continue
            prompt = prompts[row["prompt"]]
            suite, case = self.sources.case_of(prompt)
            trajectory = self.store.get(row["trajectory"])
            looks = imp.queries_by_retrieval and not self.critic_of.label_free(prompt)  # it reads the gold answers
            groups.setdefault(row["prompt"], []).append(
                Scored(trajectory, row["score"], evaluator.model_input(suite, case).context, row.get("passed"),
                       found_answer(case, trajectory) if looks else None))
        made, why = build_pairs(groups.values(), imp.min_margin, self.critic_of.version, imp.pairs_per_prompt,
                                imp.pass_over_fail, imp.queries_by_retrieval)
        answers = answer_pairs(rnd.lines(ANSWERS), lambda p: self.gold_grader(prompts[p]), self.critic_of.version)
        why["answer_samples"] = len(answers)
        demonstrated = self.demonstrations(rnd, evaluator)
        why["demonstrations"] = len(demonstrated)
        for extra in (answers, demonstrated, self.human_pairs(rnd)):  # each pair once, the first to make it kept
            known = {m["id"] for m in made}
            made += [p for p in extra if p["id"] not in known]
        write_atomic(rnd.dir / "pairs.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in made))
        result = {"pairs": len(made), "human": sum(p["provenance"]["source"] == "human" for p in made), **why}
        if len(made) < self.settings.train.min_pairs:
            result["stop"] = (f"only {len(made)} preference pairs (train.min_pairs = {self.settings.train.min_pairs}): "
                              "nothing to train; the active adapter stays")
        return result

    def demonstrations(self, rnd: Round, evaluator: Evaluator) -> list[dict[str, Any]]:
        """``improve.demonstrations`` worked problems a template from the generator of each suite the round draws
        from that names one, new ones each round, none a gate or test question; none without gold answers."""
        count = self.settings.improve.demonstrations
        if not count or not self.settings.critic.use_gold:
            return []
        # Round r draws problems (r - 1) * count on, going round the 1000 seeds a template has.
        first = (rnd.number - 1) * count % (1000 - 1000 % count)
        held_out = self.sources.evaluation_inputs
        pairs = []
        for name in self.drawn_suites(rnd):
            suite = self.sources.suite(name)
            if suite.spec.generator:
                problems = [p for p in worked_problems(first, count) if normal(p.question) not in held_out]
                shown = evaluator.model_input(suite, Case(suite.name, "worked", "", [], split="train"))
                pairs += demonstration_pairs(problems, shown)[0]
        return pairs

    def gold_grader(self, prompt: Prompt) -> Contains | None:
        """The grader a prompt's answer text is checked by, where its gold answers may be read."""
        if self.critic_of.label_free(prompt):
            return None
        return next((g for g in self.sources.case_of(prompt)[1].graders if isinstance(g, Contains)), None)

    def human_pairs(self, rnd: Round) -> list[dict[str, Any]]:
        """Pairs people gave through feedback, each used in one round only (the checksums a round used are kept
        in its ``human-pairs.json``), never one whose question is a gate or test case."""
        chosen = rnd.dir / "human-pairs.json"
        pairs: dict[str, dict[str, Any]] = {}  # each distinct pair once, the first time it was given
        for pair in FeedbackLog(self.settings.feedback_dir).human_pairs():
            pairs.setdefault(checksum(pair), pair)
        if chosen.exists():  # a resumed pairs stage makes the same pairs
            return [pairs[c] for c in json.loads(chosen.read_text()) if c in pairs]
        used = {c for other in self.settings.improve_dir.glob("round-*/human-pairs.json") if other != chosen
                for c in json.loads(other.read_text())}
        held_out = self.sources.evaluation_inputs
        fresh = [c for c, p in pairs.items() if c not in used and normal(question_of(p)) not in held_out]
        write_atomic(chosen, json.dumps(fresh))
        return [pairs[c] for c in fresh]

    def train(self, rnd: Round) -> dict[str, Any]:
        from strop.training.dpo import train_adapter

        name = self.adapter_name(rnd)
        base, parent = training_base(self.settings, self.registry, self.endpoint)  # merged: fresh LoRA over policy
        saved = inside(self.settings.adapters_dir, name, "adapter name") / ADAPTER_META
        try:
            meta = json.loads(saved.read_text()) if saved.exists() else train_adapter(
                rnd.dir / "pairs.jsonl", base,
                self.settings.adapters_dir / name, self.settings.train, parent=parent,
                progress=lambda step, total, _logs: self.display.progress("train", step, total),
                extra_meta={"round": rnd.number, "parent": self.registry.active})
        except StropError as exc:
            return {"stop": f"training failed: {exc.message}", "adapter": None}
        return {"adapter": name, "parent": meta["parent"], "metrics": meta["metrics"], "pairs": meta["pairs"],
                "curves": str(self.settings.adapters_dir / name / "training.png")}

    def adapter_name(self, rnd: Round) -> str:
        """The name this round trains its adapter under, chosen once and recorded before training starts: a
        round killed after the adapter was saved reuses it, one killed while training trains that name again."""
        chosen = rnd.dir / "train.name"
        if chosen.exists():
            return json.loads(chosen.read_text())["adapter"]
        name = self.registry.next_name()
        write_atomic(chosen, json.dumps({"adapter": name}))
        return name

    # -- gate and promotion ------------------------------------------------------------------
    def gate(self, rnd: Round) -> dict[str, Any]:
        """Evaluate current adapter and candidate on the gate suites and decide. Each side's server is started only
        when that side has episodes left (a resumed gate whose runs finished starts none)."""
        candidate, current = rnd.result("train")["adapter"], self.registry.active
        self.endpoint = ensure_loaded(self.settings, self.endpoint, current)
        current_run = self.current_gate_run(rnd)
        try:
            candidate_run = self.new_gate(rnd).run(
                rnd.dir, "candidate", candidate, self.display,
                lambda: candidate_endpoint(self.settings, self.endpoint, candidate,
                                           lambda text: self.display.stage("gate", text)))
        except StropError as exc:
            return {"stop": f"the candidate could not be served: {exc.message}", "promote": False}
        imp = self.settings.improve
        decision = decide(current_run, candidate_run, imp.max_drop, imp.min_gain, imp.alpha)
        return decision | {"candidate": candidate, "current": current,
                           "runs": {"candidate": candidate_run.id, "current": current_run.id},
                           "all_runs": {"candidate": run_ids(candidate_run), "current": run_ids(current_run)}}

    def current_gate_run(self, rnd: Round) -> Run:
        """The current policy's side of ``rnd``'s gate, asked where ``improve.gate_ngram`` says (the candidate's
        side is asked on a server set up alike)."""
        return self.new_gate(rnd).run(rnd.dir, "current", self.registry.active, self.display,
                                      lambda: current_gate_endpoint(self.settings, self.endpoint,
                                                                    lambda text: self.display.stage("gate", text)))

    def gate_run(self, rnd: Round, role: str, adapter: str | None) -> Run:
        """One side's gate evaluation in ``rnd``'s folder (the smoke check after a promotion uses it)."""
        return self.new_gate().run(rnd.dir, role, adapter, self.display)

    def new_gate(self, rnd: Round | None = None) -> Gate:
        """The gate over the gate split of ``improve.suites``, asking the current server unless a side says where
        (``rnd``'s rollouts say which suites run long)."""
        return Gate(self.settings, self.endpoint, [self.sources.suite(n) for n in self.settings.improve.suites],
                    rnd.lines("rollouts.jsonl") if rnd else [])

    def promote(self, rnd: Round) -> dict[str, Any]:
        gate = rnd.result("gate")
        if not gate.get("promote"):
            return {"promoted": None, "reason": gate.get("reason", "the gate did not pass")}
        activate(self.settings, self.endpoint, gate["candidate"], "promote", f"round {rnd.number}: {gate['reason']}")
        return {"promoted": gate["candidate"], "reason": gate["reason"]}

    def prompts(self, rnd: Round) -> list[Prompt]:
        return [Prompt(**row) for row in rnd.lines("prompts.jsonl")]


def all_failed(records: list[dict[str, Any]]) -> bool:
    """Whether there were episodes and every one of them errored or timed out (none ran to an answer)."""
    return bool(records) and all(r.get("status") in ("error", "timeout") for r in records)


def failure_cause(records: list[dict[str, Any]]) -> str:
    """The most common error of failed episodes, with how many had it."""
    causes: dict[str, int] = {}
    for r in records:
        cause = r.get("error") or r.get("status") or "unknown"
        causes[cause] = causes.get(cause, 0) + 1
    cause, count = max(causes.items(), key=lambda item: item[1])
    return f"{cause} ({count} of {len(records)} episodes)"
