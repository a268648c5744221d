"""The package's layers: no module imports one of a higher layer, and no import circles.

Layers, low to high (DEVELOPERS' guide, issue 12): utils < models, data, tasks,
interventions, embedded < engine < methods < runner, evaluation < steering, concepts,
editing, plots < cli (and the front door, ``hones_nn/__init__``). Every import counts:
module-level, function-level and ``TYPE_CHECKING`` ones, absolute and relative.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {
    "utils": 0,
    "models": 1,
    "data": 1,
    "tasks": 1,
    "interventions": 1,
    "embedded": 1,
    "engine": 2,
    "methods": 3,
    "runner": 4,
    "evaluation": 4,
    "steering": 5,
    "concepts": 5,
    "editing": 5,
    "plots": 5,
    "cli": 6,
    "__init__": 6,
}


def _sources() -> dict[str, Path]:
    """module name -> file, for hones_nn and the CLI (installed as hones_nn.cli)."""
    out = {}
    for f in (ROOT / "hones_nn").rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    for f in (ROOT / "cli").glob("*.py"):
        out["hones_nn.cli" + ("" if f.stem == "__init__" else f".{f.stem}")] = f
    return out


def _package(module: str) -> str:
    """The layer key of a module: its first package under hones_nn ('__init__' for hones_nn itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported hones_nn module, line) of every import in the file."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("hones_nn")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("hones_nn"):
                found.append((target, node.lineno))
    return found


def test_every_package_has_a_layer():
    packages = {_package(m) for m in _sources()}
    assert packages <= set(LAYERS), f"place these packages in the layer order: {sorted(packages - set(LAYERS))}"


def test_no_import_runs_up_the_layers():
    upward = []
    for module, path in _sources().items():
        src = LAYERS[_package(module)]
        for target, line in _imports(module, path):
            if LAYERS.get(_package(target), -1) > src:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_no_import_circles_between_modules():
    """No module-level cycle of imports (a package's __init__ importing its own members is allowed)."""
    sources = _sources()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in sources.items():
        for target, _ in _imports(module, path):
            while target and target not in sources:
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                # an import of a package's __init__ from inside the package is the package registering its members
                if path.name == "__init__.py" and target.startswith(module + "."):
                    continue
                graph[module].add(target)
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(
                    " -> ".join(stack[stack.index(nxt) :] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}"
                )
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for module in sorted(sources):
        if module not in state:
            visit(module, [])
    assert not cycles, "import circles:\n" + "\n".join(cycles)
