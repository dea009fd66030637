"""Can the 135M model learn word problems from worked solutions at all? Demonstrations on half of GSM-Symbolic's
templates, trained with SFT, tested on the 250 shared problems split by template.

The word-problem suite is a sample of reasoning-gym's ``gsm_symbolic`` (seed 42): 85 templates, each a generator of
problems with new names and numbers. ``pairs`` regenerates the shared lines to read each one's template, then draws
``--per-template`` new problems (other seeds, no shared question) from every template with an even index, and turns
each worked solution into the agent's two actions: one calculator call holding all of its steps (read by
``worked_expression``), then ``final_answer`` with the result, each in the context strop shows the model. The file
is a round's ``pairs.jsonl`` (the rejected side is a placeholder: SFT reads only the chosen one), so
``bench/ablate.py`` trains it with ``--arm NAME=train:STROP_TRAIN__METHOD=sft``. ``score`` splits ``strop eval``
runs of all 250 lines by whether the line's template had demonstrations: the first half tests new problems of
templates seen in training, the second templates never seen.

    .venv/bin/python bench/word_problem_demos.py pairs --per-template 16 --out STATE/improve/round-0001/pairs.jsonl
    .venv/bin/python bench/word_problem_demos.py score --pairs PAIRS --out bench/results/X.json base=RUN sft=RUN
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from random import Random

from strop.agents.graph import ModelInput
from strop.config import load_settings, machine
from strop.scenarios.stats import paired
from strop.tools.calculator import CalculatorError, evaluate
from strop.tools.toolkit import BUILTIN_TOOLS, final_answer
from strop.training.pairs import text_pair

REPO = Path(__file__).resolve().parents[1]
DATA = load_settings().data_dir / "math" / "gsm_symbolic.jsonl"
WHEEL = "reasoning-gym==0.1.25"  # the release the shared lines came from
CACHE = REPO / ".cache" / "reasoning-gym"
SUFFIX = " Give the result as your final answer. Do not include units."
SHARED_SEED, SHARED_SIZE = 42, 500  # the shared lines are items of this dataset (ids gsm_symbolic_N)
NEW_SEEDS = 1_000_000  # problem j of template t: seed NEW_SEEDS + 1000 t + j

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_PER_UNIT = re.compile(r"/\s*[A-Za-z]+")  # "56 orders/day": a unit, not a division
_TIMES = re.compile(r"(?<=[\d)])\s*[x×]\s*(?=[\d(])|(?<=[\d)])\s+[x×]\s+")  # "12 x 2", "25 girls x 4"
# Numbers joined by operators up to the end of the text before an "=": "56 56 * 3" ends in "56 * 3".
_EXPRESSION_END = re.compile(r"[(\s]*\d[\d.]*(?:[\s)]*[-+*/][\s(]*\d[\d.]*)+[\s)]*$")


def generators() -> tuple[dict[int, object], list[int]]:
    """reasoning-gym's gsm_symbolic generator of each template, and the templates its dataset draws from.

    Loaded from the wheel's files alone: the package's ``__init__`` imports every task family and their
    dependencies, which this needs none of."""
    root = CACHE / "wheel"
    if not (root / "reasoning_gym").is_dir():
        download = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(CACHE), WHEEL]
        subprocess.run(download, check=True)
        with zipfile.ZipFile(next(CACHE.glob("reasoning_gym-*.whl"))) as wheel:
            wheel.extractall(root)
    package = types.ModuleType("reasoning_gym")
    package.__path__ = [str(root / "reasoning_gym")]
    sys.modules.setdefault("reasoning_gym", package)
    folder = root / "reasoning_gym" / "arithmetic" / "gsm_symbolic"
    found = {}
    for name in ("generators_00_49", "generators_50_99"):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found |= {int(n.removeprefix("generate_")): getattr(module, n)
                  for n in dir(module) if n.startswith("generate_")}
    listed = re.search(r"tasks_ok = \[([\d,\s]+)\]", (folder / "gsm_symbolic.py").read_text(encoding="utf-8"))
    return found, [int(t) for t in listed[1].split(",") if t.strip()]


def shared_templates(found: dict[int, object], usable: list[int]) -> dict[str, int]:
    """Each shared line's template, checked by regenerating its question."""
    order = Random(SHARED_SEED).choices(usable, k=SHARED_SIZE)
    templates = {}
    for line in map(json.loads, DATA.read_text(encoding="utf-8").splitlines()):
        index = int(line["id"].rsplit("_", 1)[1])
        made = found[order[index]](Random(SHARED_SEED + index), 1.0)["question"] + SUFFIX
        if made != line["question"]:
            raise SystemExit(f"{DATA}: {line['id']} is not item {index} of gsm_symbolic seed {SHARED_SEED} ({WHEEL})")
        templates[line["id"]] = order[index]
    return templates


def worked_expression(solution: str, answer: float, question: str) -> str | None:
    """A worked solution's steps (``<expression> = <value>`` among words and units) as one expression over the
    question's numbers, each earlier step's value replaced by its expression: "12 x 2 = 24 [...] 12 + 24 + 34 = 70"
    gives ``12 + (12*2) + (17 + 17)``. A step rounded down is kept as ``(...) // 1``; one the calculator does not
    confirm is left out with every step built on it. None where the result misses ``answer``, uses a number the
    question lacks, or is ambiguous (it changes when a step whose value is also one of the question's numbers is
    read as that number)."""
    given = set(_NUMBER.findall(question.replace(",", "")))
    expression = _chain(solution, given, substitute_given=True)
    if expression is None or expression != _chain(solution, given, substitute_given=False):
        return None
    if _value(expression) != float(answer) or not set(_NUMBER.findall(expression)) <= given | {"1", "2", "100"}:
        return None
    return expression


def _chain(solution: str, given: set[str], substitute_given: bool) -> str | None:
    """The last confirmed step of ``solution`` with the earlier steps' expressions in place of their values."""
    steps: dict[str, str] = {}  # a step's value as written -> its expression
    doubtful: set[str] = set()  # values of steps left out
    last = None
    for line in solution.split("\n"):
        sides = line.split("=")
        for left, right in zip(sides, sides[1:], strict=False):
            expression, value = _step(left, right)
            if expression is None:
                continue
            if any(n in doubtful and n not in steps and n not in given for n in _NUMBER.findall(expression)):
                doubtful.add(value)  # it builds on a step left out
                continue
            expression = _NUMBER.sub(lambda n: f"({steps[n[0]]})" if n[0] in steps and (
                substitute_given or n[0] not in given) else n[0], expression)
            exact = _value(expression)
            if exact is not None and exact != float(value) and math.floor(exact) == float(value):
                expression = f"({expression}) // 1"  # the solution rounded down: "11 * 0.5 = 5" tubes
            elif exact != float(value):
                doubtful.add(value)  # misread
                continue
            steps.setdefault(value, expression)
            last = expression
    return last


def _step(left: str, right: str) -> tuple[str | None, str]:
    """The expression ending the text before an ``=`` (from its last colon on) and the number after it."""
    value = _NUMBER.search(_arithmetic(right).strip()[:12])
    found = _EXPRESSION_END.search(_arithmetic(left).rsplit(":", 1)[-1])
    if not value or not found:
        return None, ""
    expression = found[0].strip()
    while expression.startswith("(") and expression.count("(") > expression.count(")"):
        expression = expression[1:]
    return re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", re.sub(r"\s+", " ", expression))), value[0]


def _arithmetic(text: str) -> str:
    """A line of a worked solution with its words, units and currency dropped."""
    text = _PER_UNIT.sub(" ", re.sub(r"[€$£¥₹]", "", text.replace(",", "")))
    return re.sub(r"(?<=\d)\s*\(", "*(", re.sub(r"[A-Za-z%'’]+", " ", _TIMES.sub("*", text)))


def _value(expression: str) -> float | None:
    try:
        return float(evaluate(expression))
    except (CalculatorError, ValueError):
        return None


def demonstrations(per_template: int) -> tuple[list[dict], dict[str, int]]:
    """The two demonstrated actions of ``per_template`` new problems of every even template, as pairs."""
    found, usable = generators()
    shared = shared_templates(found, usable)
    seen = {json.loads(line)["question"] for line in DATA.read_text(encoding="utf-8").splitlines()}
    shown = ModelInput([t for t in BUILTIN_TOOLS if t.name in ("think", "calculator")] + [final_answer])
    pairs, counts = [], {"problems": 0, "left_out": 0}
    for template in (t for t in usable if t % 2 == 0):
        for j in range(per_template):
            problem = found[template](Random(NEW_SEEDS + 1000 * template + j), 1.0)
            question = problem["question"] + SUFFIX
            expression = worked_expression(problem["metadata"]["answer_cot"], float(problem["answer"]), question)
            if question in seen or expression is None:
                counts["left_out"] += 1
                continue
            seen.add(question)
            counts["problems"] += 1
            asked = {"role": "user", "content": question}
            call = _action("calculator", {"expression": expression})
            answered = [asked, {"role": "assistant", "content": call},
                        {"role": "tool", "content": str(evaluate(expression))}]
            about = {"source": "demonstration", "critic": "worked-solution", "template": template}
            answer = _action("final_answer", {"answer": problem["answer"], "sources": []})
            pairs += [text_pair(shown.context([asked]), call, _action("final_answer", {"answer": "0", "sources": []}),
                                about),
                      text_pair(shown.context(answered), answer, call, about)]
    demonstrated = {p["provenance"]["template"] for p in pairs}
    return pairs, counts | {"templates": len(demonstrated), "shared": len(shared),
                            "shared_on_demonstrated": sum(t in demonstrated for t in shared.values())}


def _action(tool: str, args: dict) -> str:
    """An action as the model writes it under its JSON schema."""
    return json.dumps({"tool": tool, "args": args}, ensure_ascii=False, separators=(",", ":"))


def score(runs: dict[str, Path], pairs: Path) -> list[dict]:
    """Passes of each run on the templates ``pairs`` demonstrated, the others and all, the later runs against the
    first: won / lost, the exact two-sided p and 95% interval of the difference."""
    found, usable = generators()
    templates = shared_templates(found, usable)
    shown = {json.loads(line)["provenance"]["template"] for line in pairs.read_text(encoding="utf-8").splitlines()}
    passed = {name: {row["case"]: bool(row["passed"]) for row in map(json.loads, (folder / "results.jsonl").open())}
              for name, folder in runs.items()}
    first, *others = runs
    rows = []
    for part, wanted in (("demonstrated templates", {True}), ("templates never demonstrated", {False}),
                         ("all", {True, False})):
        cases = [c for c in passed[first] if (templates[c] in shown) in wanted]
        row = {"part": part, "templates": len({templates[c] for c in cases}), "cases": len(cases)} | {
            name: sum(passed[name][c] for c in cases) for name in runs}
        for name in others:
            won = sum(passed[name][c] and not passed[first][c] for c in cases)
            lost = sum(passed[first][c] and not passed[name][c] for c in cases)
            test = paired(len(cases), won, lost)
            row[f"{name} against {first}"] = {"won": won, "lost": lost, "p_two_sided": float(f"{test.p_two_sided:.3g}"),
                                               "ci95": [round(test.low, 3), round(test.high, 3)]}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("pairs", help="write the demonstrations as a round's pairs.jsonl")
    make.add_argument("--per-template", type=int, default=16)
    make.add_argument("--out", type=Path, required=True)
    scored = commands.add_parser("score", help="split strop eval runs of the 250 lines by template")
    scored.add_argument("--out", type=Path, required=True)
    scored.add_argument("--pairs", type=Path, required=True, help="the pairs.jsonl the runs' adapter learned")
    scored.add_argument("runs", nargs="+", help="NAME=RUN_DIR, the first the baseline")
    args = parser.parse_args()
    if args.command == "pairs":
        pairs, counts = demonstrations(args.per_template)
        args.out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
        print(json.dumps(counts | {"pairs": len(pairs), "out": str(args.out)}))
        return
    runs = {name: Path(folder) for name, folder in (run.split("=", 1) for run in args.runs)}
    rows = score(runs, args.pairs)
    args.out.write_text(json.dumps({"machine": machine(), "runs": {k: str(v) for k, v in runs.items()},
                                    "pairs": str(args.pairs), "rows": rows}, indent=1))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
