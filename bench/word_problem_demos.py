"""Can the 135M model learn word problems from worked solutions at all? Demonstrations on half of GSM-Symbolic's
templates, trained with SFT, tested on the 250 shared problems split by template.

The word-problem suite is a sample of reasoning-gym's ``gsm_symbolic`` (seed 42): 85 templates, each a generator of
problems with new names and numbers. ``pairs`` regenerates the shared lines to read each one's template, then draws
``--per-template`` new problems (other seeds, no shared question) from every template with an even index, and turns
each worked solution into the agent's two actions: one calculator call holding all of its steps (read by
``worked_expression``), then ``final_answer`` with the result, each in the context strop shows the model. The file
is a round's ``pairs.jsonl`` (each rejected side a stand-in: answering 0 at once, or calling again instead of
answering; SFT reads only the chosen one), so ``bench/ablate.py`` trains it with ``--arm NAME=train`` (the loop's
DPO + RPO) or ``--arm NAME=train:STROP_TRAIN__METHOD=sft``. ``score`` splits ``strop eval``
runs of all 250 lines by whether the line's template had demonstrations: the first half tests new problems of
templates seen in training, the second templates never seen.

    .venv/bin/python bench/word_problem_demos.py pairs --per-template 16 --out STATE/improve/round-0001/pairs.jsonl
    .venv/bin/python bench/word_problem_demos.py score --pairs PAIRS --out bench/results/X.json base=RUN sft=RUN
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from random import Random

from strop.agents.graph import ModelInput
from strop.config import load_settings, machine
from strop.scenarios.generators import SUFFIX, gsm_symbolic, worked_problems
from strop.scenarios.stats import paired
from strop.tools.toolkit import BUILTIN_TOOLS, final_answer
from strop.training.demonstrations import demonstration_pairs

DATA = load_settings().data_dir / "math" / "gsm_symbolic.jsonl"
SHARED_SEED, SHARED_SIZE = 42, 500  # the shared lines are items of this dataset (ids gsm_symbolic_N)


def shared_templates() -> dict[str, int]:
    """Each shared line's template, checked by regenerating its question."""
    found, usable = gsm_symbolic()
    order = Random(SHARED_SEED).choices(usable, k=SHARED_SIZE)
    templates = {}
    for line in map(json.loads, DATA.read_text(encoding="utf-8").splitlines()):
        index = int(line["id"].rsplit("_", 1)[1])
        made = found[order[index]](Random(SHARED_SEED + index), 1.0)["question"] + SUFFIX
        if made != line["question"]:
            raise SystemExit(f"{DATA}: {line['id']} is not item {index} of gsm_symbolic seed {SHARED_SEED}")
        templates[line["id"]] = order[index]
    return templates


def demonstrations(per_template: int) -> tuple[list[dict], dict[str, int]]:
    """The two demonstrated actions of ``per_template`` new problems of every even template, as pairs."""
    shared = shared_templates()
    seen = {json.loads(line)["question"] for line in DATA.read_text(encoding="utf-8").splitlines()}
    shown = ModelInput([t for t in BUILTIN_TOOLS if t.name in ("think", "calculator")] + [final_answer])
    problems = [p for p in worked_problems(0, per_template) if p.template % 2 == 0]
    pairs, left_out = demonstration_pairs(problems, shown, skip=seen)
    demonstrated = {p["provenance"]["template"] for p in pairs}
    return pairs, {"problems": len(pairs) // 2, "left_out": left_out, "templates": len(demonstrated),
                   "shared": len(shared), "shared_on_demonstrated": sum(t in demonstrated for t in shared.values())}


def score(runs: dict[str, Path], pairs: Path) -> list[dict]:
    """Passes of each run on the templates ``pairs`` demonstrated, the others and all, the later runs against the
    first: won / lost, the exact two-sided p and 95% interval of the difference."""
    templates = shared_templates()
    shown = {json.loads(line)["provenance"].get("template") for line in pairs.read_text(encoding="utf-8").splitlines()}
    shown.discard(None)  # a round's pairs from its own episodes demonstrate no template
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
