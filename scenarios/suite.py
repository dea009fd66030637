"""Scenario suites: YAML files of cases, each an input and an expectation (see README, "Scenarios").

A suite has defaults (tools, step budget, sampling, a memory corpus), inline ``cases`` and/or ``data``
blocks that turn the lines of a JSONL file into cases through a field mapping. Loading never stops at
a bad case: the case is skipped and a :class:`~strop.errors.Problem` says where (file and line) and
why. Only a suite that cannot be read at all raises a :class:`~strop.errors.StropError`.

Every case belongs to the ``train``, ``gate`` or ``test`` split, by a stable hash of its id mapped to
[0, 1): below ``train_fraction`` it is ``train``, at or above ``1 - test_fraction`` it is ``test``, between
them ``gate``. Training draws only on ``train``, rounds select adapters on ``gate``, and ``test`` is read by
no round and no gate: it is the held-out measure of the adapter that selection chose. Taking ``test``
from the top of the hash range leaves every ``train`` case where it was and moves only gate cases (those
hashed highest), which were never trained on, so no test case has been a training prompt.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from strop.config import SamplingSettings, load_settings
from strop.errors import Problem, StropError
from strop.files import problems_of
from strop.scenarios.graders import GraderSpecError, Spec, parse_expect
from strop.tools.declared import declared_tool

SUITES_DIR = Path(str(resources.files("strop.scenarios").joinpath("suites")))
DATA_PREFIX = "{data}/"  # a suite's path under the data_dir setting
STANDARD_TOOLS = ("think", "calculator", "search_memory", "remember", "final_answer")
Split = Literal["gate", "train", "test"]
MAX_YAML_NODES = 200_000  # nodes after expanding aliases: far above any real suite, far below an alias bomb


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Corpus(_Strict):
    """Documents ingested into the suite's own memory namespace before its cases run."""

    path: str
    text_field: str = "text"
    id_field: str | None = None


class Defaults(_Strict):
    tools: list[Literal[STANDARD_TOOLS]] | None = Field(None, description="Standard tools allowed (all if unset).")
    max_steps: int | None = Field(None, ge=1, le=50)
    min_tool_steps: int | None = Field(None, ge=0)
    timeout_s: float = Field(300.0, gt=0)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    memory: Corpus | None = None
    namespace: str | None = Field(None, description="Memory namespace of the agents (default scenario-<name>).")
    tags: list[str] = Field(default_factory=list)


class CaseSpec(_Strict):
    id: str | int | None = None
    input: str = Field(min_length=1)
    expect: dict[str, Any]
    tags: list[str] = Field(default_factory=list)
    functions: list[dict[str, Any]] = Field(default_factory=list)
    split: Split | None = None
    timeout_s: float | None = Field(None, gt=0, description="Overrides defaults.timeout_s.")


class DataSpec(_Strict):
    """Cases from a JSONL file: every string may hold ``{field}`` templates filled from each line."""

    path: str
    input: str
    expect: dict[str, Any]
    id: str = "{_line}"
    tags: list[str] = Field(default_factory=list)
    functions: str | list[Any] | None = None
    match: dict[str, str] = Field(default_factory=dict, description="field -> regex; other lines are left out")
    sample: int | None = Field(None, ge=1, description="Keep this many lines, drawn with `seed`.")
    train_sample: int = Field(0, ge=0, description="Besides `sample`, up to this many more lines whose id hashes "
                              "into the train split: more prompts for rounds, while the gate and test splits stay "
                              "those of `sample` and no sample of the file ever trains on them.")
    seed: int = 0


class SuiteSpec(_Strict):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    threshold: float = Field(0.0, ge=0, le=1, description="Lowest pass@1 that passes the suite.")
    train_fraction: float = Field(0.0, ge=0, lt=1)
    test_fraction: float = Field(0.0, ge=0, lt=1, description="Share of cases held out for the test split.")
    defaults: Defaults = Field(default_factory=Defaults)
    cases: list[Any] = Field(default_factory=list)
    data: list[DataSpec] = Field(default_factory=list)
    generator: Literal["gsm_symbolic"] | None = Field(None, description="The program the suite's task comes from "
                                                     "(scenarios/generators.py): rounds may learn from worked "
                                                     "problems it writes (improve.demonstrations).")

    @model_validator(mode="after")
    def _room_for_the_gate(self) -> SuiteSpec:
        if self.train_fraction + self.test_fraction >= 1:
            raise ValueError("train_fraction + test_fraction must stay below 1 (the rest is the gate split)")
        return self


@dataclass(frozen=True)
class Case:
    suite: str
    id: str
    input: str
    graders: list[Spec]
    tags: tuple[str, ...] = ()
    functions: tuple[dict[str, Any], ...] = ()  # extra tools for this case, declared in JSON
    split: Split = "gate"
    timeout_s: float = 300.0


@dataclass
class Suite:
    name: str
    path: Path
    spec: SuiteSpec
    cases: list[Case] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def defaults(self) -> Defaults:
        return self.spec.defaults

    def select(self, split: str = "gate", limit: int | None = None) -> list[Case]:
        """The cases of ``split`` (``gate``, ``train``, ``test`` or ``all``), at most ``limit``."""
        chosen = [c for c in self.cases if split == "all" or c.split == split]
        return chosen[:limit] if limit else chosen


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def resolve(ref: str) -> Path:
    """A suite file from a path or a built-in name.

    Raises:
        StropError: when it is neither.
    """
    path = Path(ref)
    if path.is_file():
        return path
    builtin = SUITES_DIR / f"{ref}.yaml"
    if builtin.is_file():
        return builtin
    raise StropError(f"No suite file or built-in suite named {ref!r}.",
                     fix=f"Give a path to a .yaml file, or one of: {', '.join(builtin_suites())}.")


def load_suite(ref: str | Path) -> Suite:
    """Read and validate a suite; bad cases become ``problems``, a bad suite raises.

    Raises:
        StropError: naming the file, line and field when the file is unreadable or its top level invalid.
    """
    path = resolve(str(ref))
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _refuse_alias_bombs(path, node)
        lines = _line_index(node)
        raw = yaml.safe_load(text)
    except RecursionError as exc:
        raise StropError(f"{path}: nested too deeply to read.", fix="Flatten the YAML.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise StropError(f"Cannot read suite {path}: {exc}.", fix="Check the file.") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise StropError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc}).",
                         fix="Correct the YAML syntax (indentation, quotes, colons).") from exc
    if not isinstance(raw, dict):
        raise StropError(f"{path}:1: a suite must be a mapping with `cases:` and/or `data:`.",
                         fix="See the README's Scenarios section for the format.")
    try:
        spec = SuiteSpec.model_validate(raw)
    except ValidationError as exc:
        raise StropError(_describe(path, lines, exc), fix="Correct the named field (see README, Scenarios).") from exc
    if not spec.cases and not spec.data:
        raise StropError(f"{path}:1: the suite has no `cases:` and no `data:`.", fix="Add at least one case.")
    suite = Suite(spec.name or path.stem, path, spec)
    _add_inline(suite, lines)
    for index, data in enumerate(spec.data):
        _add_data(suite, data, lines.get(("data", index), 1))
    return suite


# -- inline cases ------------------------------------------------------------------------------

def _add_inline(suite: Suite, lines: dict[tuple, int]) -> None:
    seen: set[str] = set()
    for index, raw in enumerate(suite.spec.cases):
        line = lines.get(("cases", index), 1)
        try:
            case = _case(suite, CaseSpec.model_validate(raw), str(index + 1))
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            loc = ("cases", index, *error["loc"])
            suite.problems.append(Problem(str(suite.path), f"case {index + 1}, field "
                                          f"{_dotted(loc[2:]) or '(case)'}: {error['msg']}.",
                                          "Correct the case.", _nearest(lines, loc)))
            continue
        except GraderSpecError as exc:
            suite.problems.append(Problem(str(suite.path), f"case {index + 1}, {exc.field}: {exc}.",
                                          "Correct the expectation (see README, Graders).",
                                          _nearest(lines, ("cases", index, "expect")) or line))
            continue
        _keep(suite, case, seen, line)


def _case(suite: Suite, spec: CaseSpec, default_id: str, tags: tuple[str, ...] = ()) -> Case:
    case_id = str(spec.id if spec.id is not None else default_id)
    for fn in spec.functions:
        try:
            declared_tool(fn)
        except ValueError as exc:
            raise GraderSpecError("functions", str(exc)) from None
    return Case(suite=suite.name, id=case_id, input=spec.input, graders=parse_expect(spec.expect),
                tags=tuple(dict.fromkeys([*suite.defaults.tags, *tags, *spec.tags])),
                functions=tuple(spec.functions),
                split=spec.split or _split(suite.name, case_id, suite.spec.train_fraction, suite.spec.test_fraction),
                timeout_s=spec.timeout_s or suite.defaults.timeout_s)


def _keep(suite: Suite, case: Case, seen: set[str], line: int | None, path: str | None = None) -> None:
    if case.id in seen:
        suite.problems.append(Problem(path or str(suite.path), f"case id {case.id!r} is used twice; "
                                      "the later case is skipped.", "Give every case its own id.", line))
        return
    seen.add(case.id)
    suite.cases.append(case)


def _split(suite: str, case_id: str, train_fraction: float, test_fraction: float = 0.0) -> Split:
    at = int(hashlib.sha256(f"{suite}/{case_id}".encode()).hexdigest()[:8], 16) / 2**32
    if at < train_fraction:
        return "train"
    return "test" if at >= 1 - test_fraction else "gate"


def fingerprint(suite: Suite, cases: list[Case]) -> str:
    """A hash of what evaluating ``cases`` of ``suite`` means: the suite's defaults (tools, budget, sampling,
    memory corpus) and each case's input, graders, functions and timeout. Two runs with the same fingerprint
    (and adapter and model) asked the same questions the same way."""
    content = {"defaults": suite.defaults.model_dump(mode="json"),
               "cases": [[c.id, c.input, [g.model_dump(mode="json") | {"kind": type(g).__name__} for g in c.graders],
                          list(c.functions), c.timeout_s] for c in cases]}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- cases from data ---------------------------------------------------------------------------

def resolve_path(suite: Suite, path: str) -> Path:
    """A file a suite names: ``{data}/...`` under the ``data_dir`` setting (external data such as SQuAD),
    anything else relative to the suite file."""
    if path.startswith(DATA_PREFIX):
        return (load_settings().data_dir / path.removeprefix(DATA_PREFIX)).resolve()
    return (suite.path.parent / path).resolve()


def _add_data(suite: Suite, data: DataSpec, yaml_line: int) -> None:
    path = resolve_path(suite, data.path)
    if not path.is_file():
        suite.problems.append(Problem(str(suite.path), f"data file {data.path} not found (looked at {path}); "
                                      "its cases are skipped.", "Correct `data.path` (relative to the suite "
                                      "file, or {data}/... under the data_dir setting, STROP_DATA_DIR) or "
                                      "fetch the data.", yaml_line))
        return
    rows = _sampled(suite, data, _matching_rows(suite, path, data))
    seen = {c.id for c in suite.cases}
    for line, row in rows:
        try:
            spec = CaseSpec(id=_render(data.id, row), input=_render(data.input, row),
                            expect=_render(data.expect, row), tags=_render(data.tags, row),
                            functions=_render(data.functions, row) or [])
            case = _case(suite, spec, str(line), ())
        except (KeyError, IndexError, TypeError, ValueError) as exc:  # incl. pydantic/grader errors
            suite.problems.append(Problem(str(path), f"case skipped: {_why(exc)}",
                                          f"Fix the line, or the mapping in {suite.path}:{yaml_line}.", line))
            continue
        _keep(suite, case, seen, line, str(path))


def _sampled(suite: Suite, data: DataSpec, rows: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
    """``data.sample`` of ``rows`` (the same lines whatever ``train_sample`` is), then ``train_sample`` more of the
    rest whose id hashes into the train split, in file order."""
    if not data.sample or len(rows) <= data.sample:
        return rows
    rng = random.Random(data.seed)
    kept = rng.sample(rows, data.sample)
    if data.train_sample:
        taken = {line for line, _ in kept}
        pool = [(line, row) for line, row in rows if line not in taken and _hashes_to_train(suite, data, row)]
        kept += rng.sample(pool, min(data.train_sample, len(pool)))
    return sorted(kept, key=lambda r: r[0])


def _hashes_to_train(suite: Suite, data: DataSpec, row: dict[str, Any]) -> bool:
    try:
        case_id = str(_render(data.id, row))
    except (KeyError, IndexError, TypeError, ValueError):
        return False  # a line that makes no case
    return _split(suite.name, case_id, suite.spec.train_fraction, suite.spec.test_fraction) == "train"


def _matching_rows(suite: Suite, path: Path, data: DataSpec) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for line, row in problems_of(path, suite.problems, "Correct the line; the case it makes is skipped."):
        row["_line"] = line
        if all(re.search(pattern, str(row.get(key, ""))) for key, pattern in data.match.items()):
            rows.append((line, row))
    return rows


_ONE_FIELD = re.compile(r"\{([^{}]+)\}")
_FORMATTER = string.Formatter()


def _render(template: Any, row: dict[str, Any]) -> Any:
    """Fill ``{field}`` templates from ``row``; a template that is one field alone keeps the value's type."""
    if isinstance(template, str):
        whole = _ONE_FIELD.fullmatch(template)
        if whole:
            return _lookup(whole[1], row)
        return _FORMATTER.vformat(template, (), _Row(row))
    if isinstance(template, list):
        return [_render(t, row) for t in template]
    if isinstance(template, dict):
        return {k: _render(v, row) for k, v in template.items()}
    return template


def _lookup(name: str, row: dict[str, Any]) -> Any:
    try:
        return _FORMATTER.get_field(name, (), _Row(row))[0]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise KeyError(f"field {name!r} is absent from the line ({exc})") from None


class _Row(dict):
    def __missing__(self, key: str) -> Any:
        raise KeyError(f"field {key!r} is absent from the line (fields: {', '.join(k for k in self if k != '_line')})")


def _why(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors(include_url=False)[0]
        return f"field {_dotted(error['loc'])}: {error['msg']}."
    if isinstance(exc, GraderSpecError):
        return f"{exc.field}: {exc}."
    return (exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)).rstrip(".") + "."


# -- YAML safety and line numbers ---------------------------------------------------------------

def _refuse_alias_bombs(path: Path, root: yaml.Node | None) -> None:
    """Refuse a document whose aliases expand to more than MAX_YAML_NODES nodes ("billion laughs").

    Composing keeps one node per anchor (aliases point to it), so the document is small; building Python
    objects from it would expand every alias. The expanded size is counted on the graph instead, each
    distinct node once, in time linear in the composed document.

    Raises:
        StropError: naming the file when the expansion is too large.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int = 0) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > 200:
            raise RecursionError
        sizes[id(node)] = MAX_YAML_NODES + 1  # a node inside itself (a recursive alias) expands forever
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(item, depth + 1) for item in node.value)
        else:
            total = 1
        sizes[id(node)] = min(total, MAX_YAML_NODES + 1)
        return sizes[id(node)]

    if root is not None and size(root) > MAX_YAML_NODES:
        raise StropError(f"{path}: its YAML aliases expand to more than {MAX_YAML_NODES:,} values (nested aliases, "
                         "a \"billion laughs\" document); refused.",
                         fix="Write the suite without nested anchors and aliases (&name / *name).")

def _line_index(node: yaml.Node | None, path: tuple = ()) -> dict[tuple, int]:
    """The 1-based line of every mapping value and sequence item, by its path of keys and indexes."""
    if node is None:
        return {}
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue  # a complex key; validation reports it against the mapping's line
            lines.update(_line_index(value, (*path, key.value)))
            lines[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, index)))
    return lines


def _nearest(lines: dict[tuple, int], loc: tuple) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _describe(path: Path, lines: dict[tuple, int], exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        line = _nearest(lines, tuple(error["loc"])) or 1
        problems.append(f"{path}:{line}: field {_dotted(error['loc']) or '(suite)'}: {error['msg']}"
                        + (f"; got {error['input']!r:.60}" if error["type"] != "missing" else ""))
    return "Invalid suite:\n  " + "\n  ".join(problems)


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)
