"""Where a round's prompts come from: train cases of suites, people's chat questions, and questions the
served model writes about passages of the memory. No gate- or test-split input of any suite is ever a prompt."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strop.config import Settings
from strop.errors import StropError
from strop.prompts import PromptTemplate, load_prompt
from strop.scenarios.suite import Case, Defaults, Suite, SuiteSpec, builtin_suites, load_suite
from strop.serving.endpoint import Endpoint
from strop.trajectories import TrajectoryStore

SOURCES = ("suite", "chat", "synthetic")


@dataclass
class Prompt:
    """One prompt of a round: a train case of a suite, a chat question, or a question written from memory."""

    id: str
    source: str  # one of SOURCES
    input: str
    suite: str | None = None
    case: str | None = None
    passage: str | None = None  # synthetic: the passage the question was written from
    functions: list[dict[str, Any]] = field(default_factory=list)


class PromptSources:
    """The suites a round draws on (loaded once) and the prompts it collects from them and elsewhere."""

    def __init__(self, settings: Settings, endpoint: Endpoint, store: TrajectoryStore):
        self.settings, self.endpoint, self.store = settings, endpoint, store
        self._suites: dict[str, Suite] = {}

    def suite(self, name: str) -> Suite:
        """Suite ``name``, loaded once.

        Raises:
            StropError: when a problem left it without a single case (its data file is missing, say): rounds and
                gates over it would silently learn and compare nothing.
        """
        if name not in self._suites:
            suite = load_suite(name)
            if not suite.cases and suite.problems:
                problem = suite.problems[0]
                raise StropError(f"Suite {name} has no cases: {problem.where}: {problem.message}", fix=problem.fix)
            self._suites[name] = suite
        return self._suites[name]

    def collect(self, seed: int, suites: list[str],
                note: Callable[[str], None] = lambda text: None) -> tuple[list[Prompt], int]:
        """A round's prompts (seeded) from the train splits of ``suites``, chat and memory, without duplicates or
        evaluation cases; and how many were dropped as such."""
        imp = self.settings.improve
        rng = random.Random(seed)
        prompts: list[Prompt] = []
        for name in suites:
            train = self.suite(name).select("train")
            prompts += [suite_prompt(name, case) for case in rng.sample(train, min(imp.prompts_per_suite, len(train)))]
        prompts += self.chat(imp.chat_prompts)
        prompts += self.synthetic(imp.synthetic_prompts, rng, note)
        held_out = self.evaluation_inputs
        kept = [p for p in prompts if normal(p.input) not in held_out]
        return list({p.id: p for p in kept}.values()), len(prompts) - len(kept)

    def more(self, prompts: list[Prompt], informative: set[str], seed: int, suites: list[str]) -> list[Prompt]:
        """Further train cases for the ``suites`` with fewer than ``prompts_per_suite`` informative prompts, as many
        as the share found so far says are needed, within ``draw_factor``.

        The share is Laplace's rule of succession, (found + 1) / (drawn + 2): a first draw with none informative
        (8 tools cases, where other rounds found 40%) still draws more, and a suite's budget stays bounded."""
        imp = self.settings.improve
        limit = int(imp.draw_factor * imp.prompts_per_suite)
        held_out = self.evaluation_inputs
        extra: list[Prompt] = []
        for name in suites:
            drawn = [p for p in prompts if p.source == "suite" and p.suite == name]
            found = sum(p.id in informative for p in drawn)
            if found >= imp.prompts_per_suite or len(drawn) >= limit:
                continue
            share = (found + 1) / (len(drawn) + 2)
            wanted = min(limit - len(drawn), math.ceil((imp.prompts_per_suite - found) / share))
            taken = {p.case for p in drawn}
            rest = [c for c in self.suite(name).select("train")
                    if c.id not in taken and normal(c.input) not in held_out]
            rng = random.Random(f"{seed}:{name}:{len(drawn)}")
            extra += [suite_prompt(name, case) for case in rng.sample(rest, min(wanted, len(rest)))]
        return extra

    @functools.cached_property
    def evaluation_inputs(self) -> frozenset[str]:
        """Every gate- and test-split input of every known suite: never a training prompt (built once, as the
        suites are loaded once)."""
        inputs = set()
        for name in {*builtin_suites(), *self.settings.improve.suites}:
            with contextlib.suppress(StropError):
                inputs |= {normal(c.input) for c in self.suite(name).cases if c.split in ("gate", "test")}
        return frozenset(inputs)

    def chat(self, limit: int) -> list[Prompt]:
        """The latest distinct questions people asked in chat that were answered."""
        seen, prompts = set(), []
        for t in self.store.query(limit=limit * 20):
            if t.scenario is None and t.status == "answered" and t.prompt not in seen and len(prompts) < limit:
                seen.add(t.prompt)
                prompts.append(Prompt(prompt_id("chat", t.prompt), "chat", t.prompt))
        return prompts

    def synthetic(self, limit: int, rng: random.Random, note: Callable[[str], None]) -> list[Prompt]:
        """Questions the model writes about passages in the memory (self-instruct); the passage is the gold source."""
        if limit == 0 or not self.settings.memory_dir.exists():
            return []
        from strop.memory.core import Memory
        from strop.memory.schema import SearchFilter

        try:
            with Memory(self.settings) as memory:
                passages = list(memory.export(SearchFilter(namespace=self.settings.agent.namespace)))
        except StropError as exc:  # e.g. a chat holds the embedded memory: this round goes without them
            note(f"(no questions from memory this round: {exc.message})")
            return []
        chosen = rng.sample(passages, min(limit, len(passages)))
        template = load_prompt("strop.training", "question", self.settings.prompts_dir)
        questions = asyncio.run(write_questions(self.endpoint, template, [p.get("text", "") for p in chosen]))
        return [Prompt(prompt_id("synthetic", q), "synthetic", q, passage=p["id"][:8])
                for p, q in zip(chosen, questions, strict=True) if q]

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


async def write_questions(endpoint: Endpoint, template: PromptTemplate, passages: list[str]) -> list[str | None]:
    """One question per passage, written by the served model under a JSON schema."""
    import openai

    client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, timeout=300, max_retries=2)
    schema = {"type": "object", "properties": {"question": {"type": "string", "minLength": 8, "maxLength": 200}},
              "required": ["question"], "additionalProperties": False}

    async def one(text: str) -> str | None:
        try:
            reply = await client.chat.completions.create(
                model=endpoint.model, temperature=0.7, max_tokens=96, messages=template.messages(passage=text[:1200]),
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


def suite_prompt(suite: str, case: Case) -> Prompt:
    return Prompt(prompt_id(suite, case.id), "suite", case.input, suite=suite, case=case.id,
                  functions=list(case.functions))


def prompt_id(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def normal(text: str) -> str:
    """Case, punctuation and spacing folded away: how inputs are compared."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())
