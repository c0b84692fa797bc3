"""The package's layering, checked: every import (inside functions too) points at a lower floor or stays in
its own room, no module imports another module's private names, and there is no import cycle.

Floors, lowest first (docs/architecture.md draws the same picture):
  0 errors, version
  1 schema, storage, text/, arms              pure logic and the one filesystem module
  2 config, prompts/, demo/, partitions       typed config, prompt sets, built-in corpora; partitioned stores
  3 layout, inputs, planning                  where things live; reading the user's input; the task plan
  4 engines/, corpus                          the engine seam; the one reader of the corpus, per partition
  5 context, runtime, lease                   the run resolved once; starting Ray; one writer per output_dir
  6 ledger                                    commit markers -> totals, progress, run state
  7 stages/                                   each stage's driver half and worker half
  8 pipeline, estimate                        the stage order; the dry run
  9 train/, eval/                             continued pretraining; evaluation (never each other)
 10 workflows/                                run, sweep, ablate
 11 api                                       the Python API: the steps as functions, the corpus as a dataset
 12 publish, status, view                     export: Parquet, cards, the Hub; every step's state; the HTML report
 13 cli, ray_entigraph                       the command line and the package root
 14 __main__                                  `python -m ray_entigraph`
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "ray_entigraph"

FLOORS = {
    "errors": 0, "version": 0,
    "schema": 1, "storage": 1, "text": 1, "arms": 1,
    "config": 2, "prompts": 2,
    "demo": 2, "partitions": 2,
    "layout": 3, "inputs": 3, "planning": 3,
    "engines": 4, "corpus": 4,
    "context": 5, "runtime": 5, "lease": 5,
    "ledger": 6,
    "stages": 7,
    "pipeline": 8, "estimate": 8,
    "train": 9, "eval": 9,
    "workflows": 10,
    "api": 11,
    "publish": 12, "status": 12, "view": 12,
    "cli": 13, "": 13, "__main__": 14,
}


def _modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _room(module: str) -> str:
    """The top-level room of a package module ('ray_entigraph.stages.base' -> 'stages')."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(module: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> list[tuple[str, list[str], int]]:
    """(imported package module, names taken from it, line) for every import of the package, at any depth."""
    out = []
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("ray_entigraph")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("ray_entigraph"):
                continue
            names = [a.name for a in node.names]
            # `from ray_entigraph import schema` imports the module ray_entigraph.schema
            for name in names:
                if f"{target}.{name}" in modules:
                    out.append((f"{target}.{name}", [], node.lineno))
                    names = [n for n in names if n != name]
            if names:
                out.append((target, names, node.lineno))
    return out


def _graph(root: pathlib.Path = PACKAGE):
    modules = _modules(root)
    return modules, {m: _imports(m, p, modules) for m, p in modules.items()}


def upward_imports(root: pathlib.Path = PACKAGE) -> list[str]:
    modules, graph = _graph(root)
    bad = []
    for module, imports in graph.items():
        room = _room(module)
        for target, _, line in imports:
            other = _room(target)
            if other == room or target == "ray_entigraph":
                continue
            if FLOORS[other] >= FLOORS[room]:
                bad.append(f"{module}:{line} imports {target} (floor {FLOORS[other]} >= {FLOORS[room]})")
    return bad


def test_every_room_has_a_floor():
    modules, _ = _graph()
    assert {_room(m) for m in modules} <= set(FLOORS), "a new top-level module needs a floor in FLOORS"


def test_imports_point_down_or_stay_in_their_room():
    bad = upward_imports()
    assert not bad, "\n".join(bad)


def test_no_private_names_cross_modules():
    modules, graph = _graph()
    bad = [f"{m}:{line} imports {t}.{n}" for m, imports in graph.items() for t, names, line in imports
           for n in names if n.startswith("_") and t != m and not n.startswith("__")]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    modules, graph = _graph()
    edges = {m: {t for t, _, _ in imports if t in modules and t != m} for m, imports in graph.items()}
    # a package's __init__ importing its own submodules is not a cycle of concern; everything else is
    cycles = []
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in edges[m]:
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                if not all(c == t or c.startswith(t + ".") or t.startswith(c + ".") for c in cycle):
                    cycles.append(" -> ".join(cycle))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_an_upward_import_inside_a_function(tmp_path):
    """The layering test fails on an engine that imports evaluation code inside a function (the cycle that
    engines/transformers_engine.py and eval/scoring.py once had)."""
    pkg = tmp_path / "ray_entigraph"
    (pkg / "engines").mkdir(parents=True)
    (pkg / "eval").mkdir()
    for f in ("__init__.py", "engines/__init__.py", "eval/__init__.py", "eval/scoring.py"):
        (pkg / f).write_text("")
    (pkg / "engines" / "hf.py").write_text("def f():\n    from ray_entigraph.eval.scoring import x\n")
    assert upward_imports(pkg) == ["ray_entigraph.engines.hf:2 imports ray_entigraph.eval.scoring (floor 9 >= 4)"]
