"""Run scenario cases through the agent, many at once, and grade every episode.

Each case runs ``repeat`` times (pass^k needs several samples); every episode is a logged trajectory
tagged with the suite and case id, and its graded result is saved to the run at once. A case that
times out or fails to run is recorded as such, and the other cases go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import Any

from strop.agents.agent import Agent, Task
from strop.agents.graph import FINAL_ANSWER, ModelInput
from strop.agents.learned import open_learned
from strop.aio import at_most
from strop.config import SamplingSettings, Settings
from strop.errors import Problem
from strop.memory.schema import SearchFilter
from strop.scenarios.graders import Judge, Outcome, Rubric
from strop.scenarios.runs import EvalOptions, Expected, Run, RunStore, expected_seconds
from strop.scenarios.suite import Case, Suite, fingerprint, resolve_path
from strop.serving.endpoint import Endpoint
from strop.tools.base import Tool
from strop.tools.declared import declared_tool
from strop.tools.toolkit import LazyMemory, standard_tools
from strop.trajectories import Trajectory, TrajectoryStore

Progress = Callable[[str, dict[str, Any]], None]  # (suite name, the episode's record)
IngestProgress = Callable[[Suite], AbstractContextManager[Callable[[int, int], None]]]  # per suite: (done, total)


def namespace(suite: Suite) -> str:
    """The memory namespace of a suite's corpus and its agents."""
    return suite.defaults.namespace or f"scenario-{suite.name}"


class Evaluator:
    """Runs the cases of suites against one endpoint (and adapter) and records graded results."""

    def __init__(self, settings: Settings, endpoint: Endpoint, *, adapter: str | None = None,
                 store: TrajectoryStore | None = None, memory: LazyMemory | None = None,
                 judge: Judge | None = None, sampling: SamplingSettings | None = None, label: str | None = None):
        self.settings = settings
        self.label = label  # trajectories are tagged "<label>:<suite>" (e.g. rollouts) instead of "<suite>"
        self.sampling = sampling  # overrides every suite's (rollouts sample; evaluations follow the suite)
        self.endpoint = endpoint
        self.adapter = adapter
        self.store = store
        self.memory = memory or LazyMemory(settings)
        self.judge = judge
        self.scratch = f"scratch-{uuid.uuid4().hex[:12]}"  # where `remember` writes: never a suite's or the user's
        self._agents: dict[str, Agent] = {}

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.discard_scratch()

    def discard_scratch(self) -> None:
        """Delete what `remember` wrote during these runs: an evaluation leaves the memory as it found it."""
        if self.memory.is_open:
            with self.memory as memory:
                memory.delete(SearchFilter(self.scratch))

    def prepare(self, suite: Suite, progress: Callable[[int, int], None] | None = None) -> None:
        """Ingest the suite's memory corpus into its namespace (chunks already stored are skipped)."""
        corpus = suite.defaults.memory
        if corpus is None:
            return
        path = resolve_path(suite, corpus.path)
        with self.memory as memory:
            report = memory.ingest([path], namespace=namespace(suite), text_field=corpus.text_field,
                                   id_field=corpus.id_field, progress=progress)
        suite.problems += [Problem(p.path, f"memory corpus: {p.message}", p.fix, p.line) for p in report.problems]

    async def run(self, run: Run, suites: list[Suite], cases: dict[str, list[Case]], repeat: int,
                  concurrency: int, progress: Progress | None = None, expected: Expected | None = None) -> None:
        """Run every (case, repeat) not yet in ``run``, at most ``concurrency`` at a time, the longest ``expected``
        first."""
        done = {(r["suite"], r["case"], r["repeat"]) for r in run.records()}
        by_name = {s.name: s for s in suites}
        todo = [(by_name[name], case, k) for name, chosen in cases.items() for case in chosen
                for k in range(repeat) if (name, case.id, k) not in done]
        if expected:
            todo.sort(key=lambda item: -expected(item[0].name, item[1].id))

        async def one(suite: Suite, case: Case, k: int) -> None:
            try:
                record = await self.episode(suite, case, k)
            except Exception as exc:  # a bug in a grader or tool must not stop the other cases
                record = {"suite": suite.name, "case": case.id, "repeat": k, "split": case.split,
                          "tags": list(case.tags), "status": "error", "passed": False, "grades": [],
                          "error": f"{type(exc).__name__}: {exc}"}
            run.append(record)
            if progress:
                progress(suite.name, record)

        await at_most(concurrency, (one(*item) for item in todo))

    async def episode(self, suite: Suite, case: Case, repeat: int = 0) -> dict[str, Any]:
        """Run and grade one episode of ``case``; never raises for a failing agent."""
        record = {"suite": suite.name, "case": case.id, "repeat": repeat, "split": case.split,
                  "tags": list(case.tags), "answer": None, "trajectory": None, "grades": [], "error": None}
        began = time.perf_counter()
        task = Task(case.input, scenario=f"{self.label}:{suite.name}" if self.label else suite.name, case_id=case.id)
        try:
            trajectory = await asyncio.wait_for(self.agent(suite, case).arun(task), case.timeout_s)
        except TimeoutError:
            return record | {"status": "timeout", "passed": False, "latency_s": time.perf_counter() - began,
                             "error": f"no answer within {case.timeout_s:g} s (timeout_s)"}
        outcome = outcome_of(trajectory)
        grades = [await g.grade(outcome, self.judge) for g in case.graders]
        passed = trajectory.status != "error" and all(g.passed for g in grades)
        return record | {
            "status": "error" if trajectory.status == "error" else ("passed" if passed else "failed"),
            "passed": passed, "answer": outcome.answer, "trajectory": trajectory.id,
            "grades": [asdict(g) for g in grades], "agent_status": trajectory.status,
            "error": "; ".join(trajectory.errors) or None, "steps": trajectory.model_calls,
            "tokens": trajectory.prompt_tokens + trajectory.completion_tokens,
            "completion_tokens": trajectory.completion_tokens, "latency_s": time.perf_counter() - began,
        }

    def agent(self, suite: Suite, case: Case) -> Agent:
        """The agent for a case (one per suite, or per set of declared functions)."""
        key = f"{suite.name}\0{json.dumps(case.functions, sort_keys=True)}"
        if key not in self._agents:
            settings = self.settings_for(suite)
            self._agents[key] = self.make_agent(settings, self.tools_for(settings, suite, case),
                                                self.sampling or suite.defaults.sampling)
        return self._agents[key]

    def model_input(self, suite: Suite, case: Case) -> ModelInput:
        """What the case's agent shows the model before each action, built without a model client: preference
        pairs rebuild their prompts with it."""
        settings = self.settings_for(suite)
        tools = self.tools_for(settings, suite, case)
        return ModelInput(tools, settings.agent.exemplars, open_learned(settings, tools, self.memory),
                          settings.prompts_dir)

    def settings_for(self, suite: Suite) -> Settings:
        """The settings with the suite's step budget and memory namespace."""
        defaults = suite.defaults
        budget = {k: v for k, v in (("max_steps", defaults.max_steps), ("min_tool_steps", defaults.min_tool_steps))
                  if v is not None}
        agent = self.settings.agent.model_copy(update=budget | {"namespace": namespace(suite)})
        return self.settings.model_copy(update={"agent": agent})

    def tools_for(self, settings: Settings, suite: Suite, case: Case) -> list[Tool]:
        """The suite's standard tools plus the case's declared functions, ``final_answer`` last."""
        allowed = suite.defaults.tools
        tools = [t for t in standard_tools(settings, self.memory, remember_into=self.scratch)
                 if allowed is None or t.name in allowed or t.name == FINAL_ANSWER]
        return [*tools[:-1], *(declared_tool(spec) for spec in case.functions), tools[-1]]

    def make_agent(self, settings: Settings, tools: list[Tool], sampling: SamplingSettings) -> Agent:
        return Agent.for_endpoint(settings, self.endpoint, tools, adapter=self.adapter, sampling=sampling,
                                  store=self.store)


def needs_judge(cases: dict[str, list[Case]]) -> bool:
    return any(isinstance(g, Rubric) for chosen in cases.values() for c in chosen for g in c.graders)


def outcome_of(trajectory: Trajectory) -> Outcome:
    """The answer (without citations), the cited sources and every tool call of a trajectory."""
    calls: list[tuple[str, dict[str, Any]]] = []
    for message in trajectory.messages:
        for call in message.get("tool_calls") or []:
            function = call.get("function", {})
            try:
                args = json.loads(function.get("arguments") or "{}")
            except json.JSONDecodeError:
                args = {}
            calls.append((function.get("name", ""), args if isinstance(args, dict) else {}))
    finals = [args for name, args in calls if name == FINAL_ANSWER]
    answer = finals[-1].get("answer") if finals and trajectory.status == "answered" else None
    return Outcome(question=trajectory.prompt, answer=answer if isinstance(answer, str) else None,
                   sources=list(finals[-1].get("sources") or []) if finals else [],
                   calls=[c for c in calls if c[0] != FINAL_ANSWER])


def start_run(store: RunStore, model: str, options: EvalOptions, suites: list[Suite], cases: dict[str, list[Case]],
              broken: dict[str, str] | None = None) -> Run:
    """A new saved run of ``cases``; suites that did not load are recorded with the reason."""
    described: dict[str, dict[str, Any]] = {
        s.name: {"path": str(s.path.resolve()), "threshold": s.spec.threshold, "cases": len(cases[s.name]),
                 "problems": [str(p) for p in s.problems], "content": fingerprint(s, cases[s.name]),
                 "sampling": s.defaults.sampling.model_dump()} for s in suites}
    for ref, why in (broken or {}).items():
        described[ref] = {"path": ref, "threshold": None, "cases": 0, "problems": [why], "broken": True}
    return store.create(options, model, described)


def complete_run(settings: Settings, endpoint: Endpoint, run: Run, suites: list[Suite],
                 cases: dict[str, list[Case]], *, on_episode: Progress | None = None,
                 on_ingest: IngestProgress | None = None, earlier: list[dict[str, Any]] = ()) -> None:
    """Run what is left of ``run`` (its corpora ingested first) and mark it finished; the episodes expected longest,
    from the store's recent runs and ``earlier`` episode records, start first."""
    from strop.scenarios.judge import LLMJudge
    from strop.serving.endpoint import judge_endpoint

    options = run.options
    with run.exclusive():
        judge = (LLMJudge(judge_endpoint(settings, endpoint), settings.critic, prompts_dir=settings.prompts_dir)
                 if needs_judge(cases) else None)
        with Evaluator(settings, endpoint, adapter=options.adapter, judge=judge,
                       store=TrajectoryStore(settings.trajectories_path)) as evaluator:
            for suite in suites:
                if suite.defaults.memory:
                    with on_ingest(suite) if on_ingest else contextlib.nullcontext(None) as progress:
                        evaluator.prepare(suite, progress)
            expected = expected_seconds([*earlier, *RunStore(run.dir.parent).recent_records()])
            asyncio.run(evaluator.run(run, suites, cases, options.repeat, options.concurrency, on_episode, expected))
        run.meta["finished_at"] = time.time()
        run.save()
