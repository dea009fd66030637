"""The rooms import one way, bottom to top: a lower room never imports a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

# Bottom to top; rooms on one level may import each other's modules only where a level lists them alone.
LAYERS = [
    {"records"},  # strop/: config, errors, files, trajectories, feedback, prompts, aio, console
    {"serving", "memory"},
    {"tools"},
    {"agents"},
    {"scenarios"},
    {"training"},
    {"tui"},
    {"cli"},  # strop/cli.py, strop/demo.py, strop/__main__.py
]
TOP = {"cli.py", "demo.py", "__main__.py"}
ROOMS = ("serving", "memory", "tools", "agents", "scenarios", "training", "tui")


def room_of_file(path: Path, root: Path = REPO) -> str:
    top = path.relative_to(root).parts[0]
    if top == "strop":
        return "cli" if path.name in TOP else "records"
    return top


def room_of_module(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "strop":
        return None
    if len(parts) > 1 and parts[1] in ROOMS:
        return parts[1]
    return "cli" if len(parts) > 1 and f"{parts[1]}.py" in TOP else "records"


def level(room: str) -> int:
    return next(i for i, rooms in enumerate(LAYERS) if room in rooms)


def runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from runtime_nodes(node)


def imports(path: Path, runtime_only: bool = False) -> list[tuple[int, str]]:
    """Every module the file imports, at module level or inside functions, with its line (``runtime_only``:
    not those for annotations only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in runtime_nodes(tree) if runtime_only else ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                                                     if node.module == "strop"]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def wrong_way(files: list[Path], root: Path = REPO) -> list[str]:
    arrows = []
    for path in files:
        here = room_of_file(path, root)
        for line, module in imports(path):
            there = room_of_module(module)
            if there is not None and there != here and level(there) > level(here):
                arrows.append(f"{path.relative_to(root)}:{line}: {here} imports {module} ({there})")
    return arrows


def source_files() -> list[Path]:
    return [p for top in ("strop", *ROOMS) for p in sorted((REPO / top).rglob("*.py"))]


def test_no_room_imports_a_higher_one():
    assert wrong_way(source_files()) == []


def test_a_wrong_way_import_is_found(tmp_path):
    # A module of the agents room that reaches up into training, inside a function, as the old layout did;
    # and a shared record module that reaches up into agents.
    (tmp_path / "agents").mkdir()
    (tmp_path / "strop").mkdir()
    probe = tmp_path / "agents" / "probe.py"
    probe.write_text("def f():\n    from strop.training.loop import Improver\n")
    record = tmp_path / "strop" / "records.py"
    record.write_text("import strop.agents.agent\nfrom strop import demo\n")
    assert wrong_way([probe, record], tmp_path) == [
        "agents/probe.py:2: agents imports strop.training.loop (training)",
        "strop/records.py:1: records imports strop.agents.agent (agents)",
        "strop/records.py:2: records imports strop.demo (cli)"]


def test_every_room_is_placed_in_a_layer():
    assert {room_of_file(p) for p in source_files()} <= set().union(*LAYERS)


def module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts if parts[0] == "strop" else ("strop", *parts))


def cycles(files: list[Path], root: Path = REPO) -> list[list[str]]:
    """Modules that import each other, directly or around a longer circle (function-level imports count)."""
    known = {module_name(p, root): p for p in files}
    graph = {name: {m for _, m in imports(path, runtime_only=True) if m in known and m != name}
             for name, path in known.items()}
    found, state = [], {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for nxt in sorted(graph[name]):
            if state.get(nxt) == "open":
                found.append(trail[trail.index(nxt):] + [name, nxt] if nxt in trail else [name, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    return found


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(source_files()) == []


def test_a_circle_of_imports_is_found(tmp_path):
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "cli.py").write_text("from strop.training.watch_cli import unattended\n")
    (tmp_path / "training" / "watch_cli.py").write_text("def f():\n    from strop.training.cli import show\n")
    files = sorted((tmp_path / "training").glob("*.py"))
    assert cycles(files, tmp_path) == [["strop.training.cli", "strop.training.watch_cli", "strop.training.cli"]]
