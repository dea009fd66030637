"""Train problems written by a task's own generator: more of a task than its data file holds, for rounds only.

The word-problem suite is a sample of reasoning-gym's ``gsm_symbolic`` (0.1.25, Apache-2.0; ``make setup`` installs
it without its dependencies): 85 templates, each a program that writes a grade-school problem with new names and
numbers, and its worked solution. A suite names its generator (``generator: gsm_symbolic``); a round may then learn
from worked problems of every template (``improve.demonstrations``), drawn with seeds no data line was drawn with.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from random import Random

from strop.errors import StropError

PACKAGE = "reasoning-gym==0.1.25"  # the release the shared word problems came from
SUFFIX = " Give the result as your final answer. Do not include units."  # as the shared lines end
SEEDS = 1_000_000  # problem j of template t: seed SEEDS + 1000 t + j (the shared lines: seed 42 and up)


@dataclass(frozen=True)
class WorkedProblem:
    template: int
    question: str
    answer: str
    solution: str  # the worked steps, GSM8K's form: "12 x 2 = 24 [...] #### 70"


@functools.cache
def gsm_symbolic() -> tuple[dict[int, Callable], tuple[int, ...]]:
    """reasoning-gym's ``gsm_symbolic`` generator of each template, and the templates its dataset draws from.

    Loaded from the package's files alone: its ``__init__`` imports every task family and their dependencies,
    which this needs none of.

    Raises:
        StropError: reasoning-gym is not installed.
    """
    spec = importlib.util.find_spec("reasoning_gym")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise StropError(f"Word problems from their generator need {PACKAGE}, which is not installed.",
                         fix=f"Run `make setup`, or `pip install --no-deps {PACKAGE}`.")
    root = Path(spec.submodule_search_locations[0])
    package = types.ModuleType("reasoning_gym")
    package.__path__ = [str(root)]
    sys.modules.setdefault("reasoning_gym", package)
    folder = root / "arithmetic" / "gsm_symbolic"
    found = {}
    for name in ("generators_00_49", "generators_50_99"):
        module_spec = importlib.util.spec_from_file_location(f"reasoning_gym_gsm_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        found |= {int(n.removeprefix("generate_")): getattr(module, n)
                  for n in dir(module) if n.startswith("generate_")}
    listed = re.search(r"tasks_ok = \[([\d,\s]+)\]", (folder / "gsm_symbolic.py").read_text(encoding="utf-8"))
    return found, tuple(int(t) for t in listed[1].split(",") if t.strip())


def worked_problems(first: int, count: int) -> Iterator[WorkedProblem]:
    """Problems ``first`` to ``first + count - 1`` of every template, as the suite's lines are worded."""
    if first < 0 or first + count > 1000:
        raise ValueError(f"problems {first} to {first + count - 1}: a template has 1000 seeds of its own")
    found, templates = gsm_symbolic()
    for template in templates:
        for index in range(first, first + count):
            made = found[template](Random(SEEDS + 1000 * template + index), 1.0)
            yield WorkedProblem(template, made["question"] + SUFFIX, str(made["answer"]),
                                made["metadata"]["answer_cot"])
