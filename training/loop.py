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
import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strop.config import Settings
from strop.errors import StropError
from strop.files import append_line, exclusive, read_lines, write_atomic
from strop.scenarios.report import compare
from strop.scenarios.runner import Evaluator, complete_run, start_run
from strop.scenarios.runs import EvalOptions, Run, RunStore
from strop.scenarios.suite import Case, Defaults, Suite, SuiteSpec, builtin_suites, load_suite
from strop.serving.endpoint import Endpoint
from strop.training.adapters import Registry, load_adapter
from strop.training.pairs import Scored, build_pairs
from strop.training.trajectories import Trajectory, TrajectoryStore

STAGES = ("prompts", "rollouts", "critic", "pairs", "train", "gate", "promote")
CRITIC_VERSION = "verifiable-1"


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

    def lines(self, name: str) -> list[dict[str, Any]]:
        """Records appended to ``name``; a line torn by a kill is dropped (its work is redone)."""
        return read_lines(self.dir / name)

    def append(self, name: str, record: dict[str, Any]) -> None:
        append_line(self.dir / name, record)


@dataclass
class Prompt:
    """One prompt of a round: a train case of a suite, a chat question, or a question written from memory."""

    id: str
    source: str  # suite | chat | synthetic
    input: str
    suite: str | None = None
    case: str | None = None
    passage: str | None = None  # synthetic: the passage the question was written from
    functions: list[dict[str, Any]] = field(default_factory=list)


class Improver:
    """Runs rounds on one state folder against one serving endpoint."""

    def __init__(self, settings: Settings, endpoint: Endpoint, display: Display | None = None):
        self.settings = settings
        self.endpoint = endpoint
        self.display = display or Display()
        self.registry = Registry(settings.adapters_dir)
        self.store = TrajectoryStore(settings.trajectories_path)
        self._suites: dict[str, Suite] = {}

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

    # -- prompts -----------------------------------------------------------------------------
    def collect_prompts(self, rnd: Round) -> dict[str, Any]:
        imp = self.settings.improve
        rng = random.Random(rnd.number)
        prompts: list[Prompt] = []
        for name in imp.suites:
            suite = self.suite(name)
            train = suite.select("train")
            for case in rng.sample(train, min(imp.prompts_per_suite, len(train))):
                prompts.append(Prompt(_id(name, case.id), "suite", case.input, suite=name, case=case.id,
                                      functions=list(case.functions)))
        prompts += self.chat_prompts(imp.chat_prompts)
        prompts += self.synthetic_prompts(imp.synthetic_prompts, rng)
        held_out = self.evaluation_inputs()
        kept = [p for p in prompts if _normal(p.input) not in held_out]
        unique = list({p.id: p for p in kept}.values())
        write_atomic(rnd.dir / "prompts.jsonl", "".join(json.dumps(p.__dict__) + "\n" for p in unique))
        by_source = {s: sum(p.source == s for p in unique) for s in ("suite", "chat", "synthetic")}
        return {"prompts": len(unique), "by_source": by_source, "dropped_as_eval_cases": len(prompts) - len(kept)}

    def evaluation_inputs(self) -> set[str]:
        """Every gate-split input of every known suite: never a training prompt."""
        inputs = set()
        for name in {*builtin_suites(), *self.settings.improve.suites}:
            with contextlib.suppress(StropError):
                inputs |= {_normal(c.input) for c in self.suite(name).select("gate")}
        return inputs

    def chat_prompts(self, limit: int) -> list[Prompt]:
        seen, prompts = set(), []
        for t in self.store.query(limit=limit * 20):
            if t.scenario is None and t.status == "answered" and t.prompt not in seen and len(prompts) < limit:
                seen.add(t.prompt)
                prompts.append(Prompt(_id("chat", t.prompt), "chat", t.prompt))
        return prompts

    def synthetic_prompts(self, limit: int, rng: random.Random) -> list[Prompt]:
        """Questions the model writes about passages in the memory (self-instruct); the passage is the gold source."""
        if limit == 0 or not self.settings.memory_dir.exists():
            return []
        from strop.memory.core import Memory
        from strop.memory.schema import SearchFilter

        try:
            with Memory(self.settings) as memory:
                passages = list(memory.export(SearchFilter(namespace=self.settings.agent.namespace)))
        except StropError as exc:  # e.g. a chat holds the embedded memory: this round goes without them
            self.display.stage("prompts", f"(no questions from memory this round: {exc.message})")
            return []
        chosen = rng.sample(passages, min(limit, len(passages)))
        questions = asyncio.run(_write_questions(self.endpoint, [p.get("text", "") for p in chosen]))
        return [Prompt(_id("synthetic", q), "synthetic", q, passage=p["id"][:8])
                for p, q in zip(chosen, questions, strict=True) if q]

    # -- rollouts and critic -----------------------------------------------------------------
    def rollouts(self, rnd: Round) -> dict[str, Any]:
        """K sampled episodes per prompt with the active adapter, appended one by one."""
        imp = self.settings.improve
        prompts = self.prompts(rnd)
        done = {(r["prompt"], r["k"]) for r in rnd.lines("rollouts.jsonl")}
        todo = [(p, k) for p in prompts for k in range(imp.samples) if (p.id, k) not in done]
        sampling = self.settings.sampling.model_copy(update={"temperature": imp.temperature})
        evaluator = Evaluator(self.settings, self.endpoint, adapter=self.registry.active, store=self.store,
                              sampling=sampling, label="improve")
        total, finished = len(prompts) * imp.samples, len(done)
        gate = asyncio.Semaphore(imp.concurrency)

        async def one(prompt: Prompt, k: int) -> None:
            nonlocal finished
            suite, case = self.case_of(prompt)
            async with gate:
                record = await evaluator.episode(suite, case, k)
            rnd.append("rollouts.jsonl", {"prompt": prompt.id, "k": k, **record})
            finished += 1
            self.display.progress("rollouts", finished, total)

        async def all_of_them() -> None:
            await asyncio.gather(*(one(p, k) for p, k in todo))

        asyncio.run(all_of_them())
        records = rnd.lines("rollouts.jsonl")
        return {"episodes": len(records), "adapter": self.registry.active,
                "passed": sum(bool(r.get("passed")) for r in records if r.get("grades"))}

    def critic(self, rnd: Round) -> dict[str, Any]:
        """A score in 0..1 per episode from verifiable checks: graders, citations, tool errors, budget."""
        prompts = {p.id: p for p in self.prompts(rnd)}
        scored = {r["trajectory"] for r in rnd.lines("scores.jsonl")}
        for record in rnd.lines("rollouts.jsonl"):
            if not record.get("trajectory") or record["trajectory"] in scored:
                continue
            trajectory = self.store.get(record["trajectory"])
            score, why = score_episode(prompts[record["prompt"]], record, trajectory)
            rnd.append("scores.jsonl", {"prompt": record["prompt"], "trajectory": trajectory.id, "score": score,
                                        "why": why, "critic": self.critic_version})
        judged = self.judge_ties(rnd, prompts) if self.settings.critic.judge_weight > 0 else 0
        scores = [s["score"] for s in self.scores(rnd) if s["score"] is not None]
        return {"scored": len(scores), "mean_score": sum(scores) / len(scores) if scores else None,
                "judged_prompts": judged, "critic": self.critic_version}

    @property
    def critic_version(self) -> str:
        weight = self.settings.critic.judge_weight
        return f"{CRITIC_VERSION}+judge-{weight:g}" if weight > 0 else CRITIC_VERSION

    def judge_ties(self, rnd: Round, prompts: dict[str, Prompt]) -> int:
        """Ask the pairwise judge about episodes of one prompt that the verifiable checks leave tied.

        One line per prompt in ``judged.jsonl`` (each episode's mean preference over its comparisons),
        so a killed critic resumes at the next prompt.
        """
        from strop.serving.endpoint import judge_endpoint
        from strop.training.judge import LLMJudge

        done = {row["prompt"] for row in rnd.lines("judged.jsonl")}
        groups: dict[str, list[tuple[str, str, float]]] = {}
        for row in rnd.lines("scores.jsonl"):
            if row["score"] is not None and row["prompt"] not in done:
                answer = self.store.get(row["trajectory"]).answer or "(no answer)"
                groups.setdefault(row["prompt"], []).append((row["trajectory"], answer, row["score"]))
        judge = LLMJudge(judge_endpoint(self.settings, self.endpoint), self.settings.critic)
        gate = asyncio.Semaphore(self.settings.improve.concurrency)

        async def compare(question: str, a: str, b: str) -> float:
            async with gate:
                return (await judge.compare(question, a, b)).p_a

        async def one(prompt_id: str, episodes: list[tuple[str, str, float]]) -> None:
            preferences = await judged_preferences(prompts[prompt_id].input, episodes, compare,
                                                   self.settings.improve.min_margin)
            rnd.append("judged.jsonl", {"prompt": prompt_id, "preference": preferences})

        async def all_of_them() -> None:
            try:
                await asyncio.gather(*(one(p, episodes) for p, episodes in groups.items()))
            finally:
                await judge.close()

        asyncio.run(all_of_them())
        return len(rnd.lines("judged.jsonl"))

    def scores(self, rnd: Round) -> list[dict[str, Any]]:
        """The critic's scores: verifiable, moved by ``critic.judge_weight`` times the judge's preference."""
        weight = self.settings.critic.judge_weight
        preference = {t: p for row in rnd.lines("judged.jsonl") for t, p in row["preference"].items()}
        rows = rnd.lines("scores.jsonl")
        for row in rows:
            if row["score"] is not None and row["trajectory"] in preference:
                judged = row["score"] + weight * (preference[row["trajectory"]] - 0.5)
                row["score"] = max(0.0, min(1.0, judged))
        return rows

    # -- pairs and training ------------------------------------------------------------------
    def pairs(self, rnd: Round) -> dict[str, Any]:
        prompts = {p.id: p for p in self.prompts(rnd)}
        evaluator = Evaluator(self.settings, self.endpoint, store=self.store, label="improve")
        groups: dict[str, list[Scored]] = {}
        for row in self.scores(rnd):
            if row["score"] is None:
                continue
            suite, case = self.case_of(prompts[row["prompt"]])
            agent = evaluator.agent(suite, case)
            groups.setdefault(row["prompt"], []).append(
                Scored(self.store.get(row["trajectory"]), row["score"], agent.context))
        made, why = build_pairs(groups.values(), self.settings.improve.min_margin, self.critic_version)
        made += self.human_pairs()
        write_atomic(rnd.dir / "pairs.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in made))
        result = {"pairs": len(made), "human": sum(p["provenance"]["source"] == "human" for p in made), **why}
        if len(made) < self.settings.train.min_pairs:
            result["stop"] = (f"only {len(made)} preference pairs (train.min_pairs = {self.settings.train.min_pairs}): "
                              "nothing to train; the active adapter stays")
        return result

    def human_pairs(self) -> list[dict[str, Any]]:
        """Pairs people gave through feedback (``<state>/feedback/pairs.jsonl``), marked as human."""
        path = self.settings.state_dir / "feedback" / "pairs.jsonl"
        if not path.exists():
            return []
        pairs = []
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError, KeyError):
                pair = json.loads(line)
                if pair["provenance"]["source"] == "human":
                    pairs.append(pair)
        return pairs

    def train(self, rnd: Round) -> dict[str, Any]:
        from strop.serving.models import model_dir
        from strop.training.dpo import train_adapter

        name = self.registry.next_name()
        parent = self.registry.get(self.registry.active) if self.registry.active else None
        try:
            meta = train_adapter(rnd.dir / "pairs.jsonl", model_dir(self.settings.resolved_models_dir),
                                 self.settings.adapters_dir / name, self.settings.train, parent=parent,
                                 progress=lambda step, total, _logs: self.display.progress("train", step, total),
                                 extra_meta={"round": rnd.number})
        except StropError as exc:
            return {"stop": f"training failed: {exc.message}", "adapter": None}
        return {"adapter": name, "parent": meta["parent"], "metrics": meta["metrics"], "pairs": meta["pairs"],
                "curves": str(self.settings.adapters_dir / name / "training.png")}

    # -- gate and promotion ------------------------------------------------------------------
    def gate(self, rnd: Round) -> dict[str, Any]:
        """Evaluate candidate and current adapter on the gate suites and decide."""
        candidate = rnd.result("train")["adapter"]
        try:
            seconds = load_adapter(self.endpoint, self.registry.get(candidate))
        except StropError as exc:
            return {"stop": f"the server refused the candidate: {exc.message}", "promote": False}
        current = self.registry.active
        runs = self.gate_run(rnd, "candidate", candidate), self.gate_run(rnd, "current", current)
        decision = decide(runs[1], runs[0], self.settings.improve.max_drop, self.settings.improve.min_gain)
        return decision | {"candidate": candidate, "current": current, "load_s": seconds,
                           "runs": {"candidate": runs[0].id, "current": runs[1].id}}

    def gate_run(self, rnd: Round, role: str, adapter: str | None) -> Run:
        """The gate evaluation of one side, resumed when a kill interrupted it."""
        store = RunStore(self.settings.eval_dir)
        marker = rnd.dir / f"gate-{role}.run"
        suites = [self.suite(name) for name in self.settings.improve.suites]
        cases = {s.name: s.select("gate", self.settings.improve.gate_limit) for s in suites}
        if marker.exists():
            run = store.open(marker.read_text().strip())
        elif role == "current" and (earlier := self.earlier_run(store, adapter, cases)):
            run = earlier
            write_atomic(marker, run.id)
        else:
            options = EvalOptions(adapter=adapter, concurrency=self.settings.improve.concurrency, split="gate",
                                  limit=self.settings.improve.gate_limit)
            run = start_run(store, self.endpoint.model, options, suites, cases)
            write_atomic(marker, run.id)
        if not run.finished:
            with self.display.gate(run, cases) as advance:
                complete_run(self.settings, self.endpoint, run, suites, cases, on_episode=advance)
        return run

    def earlier_run(self, store: RunStore, adapter: str | None, cases: dict[str, list[Case]]) -> Run | None:
        """A finished, error-free evaluation of ``adapter`` on exactly these cases, to reuse instead of repeating.

        Gate runs are greedy, so the same adapter answers the same cases the same way: the candidate's
        run of the round that promoted it, or a baseline `strop eval`, stands for the current side.
        """
        wanted = {(suite, case.id) for suite, listed in cases.items() for case in listed}
        for run in reversed(store.list()):
            if not (run.finished and run.options.adapter == adapter and run.options.repeat == 1
                    and run.meta.get("model") == self.endpoint.model):
                continue
            records = run.records()
            if {(r["suite"], r["case"]) for r in records} == wanted and all(r["status"] != "error" for r in records):
                return run
        return None

    def promote(self, rnd: Round) -> dict[str, Any]:
        gate = rnd.result("gate")
        if not gate.get("promote"):
            return {"promoted": None, "reason": gate.get("reason", "the gate did not pass")}
        self.registry.set_active(gate["candidate"], "promote", f"round {rnd.number}: {gate['reason']}")
        return {"promoted": gate["candidate"], "reason": gate["reason"]}

    # -- helpers -----------------------------------------------------------------------------
    def suite(self, name: str) -> Suite:
        if name not in self._suites:
            self._suites[name] = load_suite(name)
        return self._suites[name]

    def prompts(self, rnd: Round) -> list[Prompt]:
        return [Prompt(**row) for row in rnd.lines("prompts.jsonl")]

    def case_of(self, prompt: Prompt) -> tuple[Suite, Case]:
        """The suite and case a prompt runs as: its own for suite prompts, an ungraded one otherwise."""
        if prompt.source == "suite":
            suite = self.suite(prompt.suite)
            return suite, next(c for c in suite.cases if c.id == prompt.case)
        name = prompt.source
        if name not in self._suites:  # chat and synthetic prompts use the agent's own memory namespace
            defaults = Defaults(namespace=self.settings.agent.namespace)
            self._suites[name] = Suite(name, Path("."), SuiteSpec(name=name, defaults=defaults))
        return self._suites[name], Case(name, prompt.id, prompt.input, graders=[])


def score_episode(prompt: Prompt, record: dict[str, Any], trajectory: Trajectory) -> tuple[float | None, list[str]]:
    """The verifiable score of one episode in 0..1, and why; None for episodes that failed to run."""
    if record.get("status") in ("error", "timeout") or trajectory.status == "error":
        return None, ["the episode failed to run"]
    why, score = [], 0.5
    if prompt.source == "suite":
        grades = record.get("grades") or []
        score = 1.0 if record.get("passed") else sum(g["score"] for g in grades) / max(1, len(grades))
        why.append("graders passed" if record.get("passed") else f"graders failed (partial credit {score:.2f})")
    elif prompt.source == "synthetic":
        searched = any(m["role"] == "tool" and m.get("name") == "search_memory" for m in trajectory.messages)
        cited = bool(prompt.passage) and prompt.passage in (trajectory.answer or "")
        score = 0.5 * searched + 0.5 * cited
        why.append(f"searched memory: {searched}, cited the source passage: {cited}")
    else:
        why.append("no verifiable check for a chat prompt: neutral")
    invalid = sum(m["role"] == "tool" and m.get("name") == "invalid_action" for m in trajectory.messages)
    errors = sum(1 for s in trajectory.steps if s.kind == "tool" and s.error and s.name != "invalid_action")
    penalty = 0.1 * invalid + 0.05 * errors + (0.25 if trajectory.status == "budget_exhausted" else 0.0)
    if penalty:
        why.append(f"-{penalty:.2f}: {invalid} invalid actions, {errors} tool errors, status {trajectory.status}")
    return max(0.0, min(1.0, score - penalty)), why


def decide(current: Run, candidate: Run, max_drop: float, min_gain: float) -> dict[str, Any]:
    """Promote only when no gate suite got worse beyond noise and the pooled pass rate rose by ``min_gain``."""
    comparisons, _ = compare(current, candidate)
    if not comparisons:
        return {"promote": False, "reason": "the gate runs share no cases", "suites": []}
    suites = [{"suite": c.suite, "current": c.rate_a, "candidate": c.rate_b, "diff": c.diff, "ci": [c.low, c.high],
               "cases": c.cases} for c in comparisons]
    worse = [c.suite for c in comparisons if c.diff < -max_drop or c.high < 0]
    cases = sum(c.cases for c in comparisons)
    gain = sum(c.diff * c.cases for c in comparisons) / cases
    if worse:
        reason = f"worse on {', '.join(worse)} (beyond a drop of {max_drop:.0%} or its 95% CI below zero)"
    elif gain < min_gain:
        reason = f"pooled gain {gain:+.1%} is below improve.min_gain {min_gain:.0%}"
    else:
        reason = f"pooled gain {gain:+.1%}, no suite worse beyond noise"
    return {"promote": not worse and gain >= min_gain, "reason": reason, "gain": gain, "suites": suites}


async def judged_preferences(question: str, episodes: list[tuple[str, str, float]],
                             compare: Callable[[str, str, str], Any], min_margin: float) -> dict[str, float]:
    """Each episode's mean preference (0..1, 0.5 neutral) from pairwise comparisons with the episodes of the
    same prompt whose verifiable scores are within ``min_margin`` of its own and whose answers differ."""
    pairs = [(a, b) for i, a in enumerate(episodes) for b in episodes[i + 1:]
             if abs(a[2] - b[2]) < min_margin and _normal(a[1]) != _normal(b[1])]
    won: dict[str, list[float]] = {}
    for (a, b), p_a in zip(pairs, await asyncio.gather(*(compare(question, a[1], b[1]) for a, b in pairs)),
                           strict=True):
        won.setdefault(a[0], []).append(p_a)
        won.setdefault(b[0], []).append(1.0 - p_a)
    return {trajectory: sum(ps) / len(ps) for trajectory, ps in won.items()}


async def _write_questions(endpoint: Endpoint, passages: list[str]) -> list[str | None]:
    """One question per passage, written by the served model under a JSON schema."""
    import openai

    client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, timeout=300, max_retries=2)
    schema = {"type": "object", "properties": {"question": {"type": "string", "minLength": 8, "maxLength": 200}},
              "required": ["question"], "additionalProperties": False}

    async def one(text: str) -> str | None:
        try:
            reply = await client.chat.completions.create(
                model=endpoint.model, temperature=0.7, max_tokens=96,
                messages=[{"role": "user", "content": f"Passage: {text[:1200]}\n\nWrite one question that this "
                                                      "passage answers."}],
                extra_body={"response_format": {"type": "json_schema", "json_schema": {
                    "name": "question", "schema": schema, "strict": True}}})
            question = json.loads(reply.choices[0].message.content or "{}").get("question", "").strip()
        except (openai.APIError, json.JSONDecodeError):
            return None
        return question if question.endswith("?") else None

    try:
        return await asyncio.gather(*(one(p) for p in passages))
    finally:
        await client.close()


def _id(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())
