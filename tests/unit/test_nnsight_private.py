"""Private nnsight symbols are imported in hones_nn/engine/nnsight_compat.py only (issue 13).

Private: an underscore name (not a dunder such as ``__version__``), or any name imported from an nnsight submodule (its
internal module paths) other than the public classes listed in PUBLIC_SUBMODULE_NAMES.
Public: what the top-level ``nnsight`` package exports (``nnsight.save``, ``NNsight``,
``nnsight.register``, ``CONFIG``, ``TransformersModel``, ``nnsight.status`` ...).
Every import counts (module-level and function-level), and attribute reads on the
``nnsight`` module (``nnsight._x``, ``nnsight.ndif.y``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPAT = ROOT / "hones_nn" / "engine" / "nnsight_compat.py"
# runs inside the NDIF server's environment, where hones_nn is not installed
SERVER_SIDE = ROOT / "tests" / "integration" / "ndif" / "server"
# public classes at their documented module path
PUBLIC_SUBMODULE_NAMES = {("nnsight.modeling.transformers", "TransformersModel")}
SUBMODULES = {"intervention", "modeling", "schema", "tracing", "ndif", "util", "_c"}


def private_uses(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, what) of every private nnsight symbol the source imports or reads."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("nnsight."):
                    found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            module = node.module
            if module == "nnsight":
                found += [(node.lineno, f"from nnsight import {a.name}") for a in node.names if a.name.startswith("_")]
            elif module.startswith("nnsight."):
                found += [
                    (node.lineno, f"from {module} import {a.name}")
                    for a in node.names
                    if (module, a.name) not in PUBLIC_SUBMODULE_NAMES
                ]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "nnsight"
            and ((node.attr.startswith("_") and not node.attr.endswith("__")) or node.attr in SUBMODULES)
        ):
            found.append((node.lineno, f"nnsight.{node.attr}"))
    return found


def _files() -> list[Path]:
    files = []
    for top in ("hones_nn", "cli", "tests", "benchmarks"):
        files += sorted((ROOT / top).rglob("*.py"))
    return [f for f in files if f != COMPAT and SERVER_SIDE not in f.parents]


def test_the_checker_sees_private_imports_and_reads():
    planted = (
        "import nnsight\n"
        "from nnsight import save, CONFIG\n"
        "from nnsight.modeling.transformers import TransformersModel\n"
        "def f():\n"
        "    from nnsight.tracing.tracer import _saves\n"
        "    from nnsight.intervention.backends.remote import RemoteBackend\n"
        "    from nnsight import _private\n"
        "    import nnsight.ndif\n"
        "    return nnsight._secret, nnsight.ndif.status, nnsight.CONFIG.API.HOST\n"
    )
    assert [line for line, _ in private_uses(planted)] == [5, 6, 7, 8, 9, 9]


def test_private_nnsight_symbols_only_in_the_compat_module():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in _files()
        for line, what in private_uses(path.read_text(), str(path))
    ]
    assert not offenders, "import these from hones_nn.engine.nnsight_compat instead:\n" + "\n".join(offenders)


def test_the_compat_module_holds_the_private_symbols():
    """What it wraps is where nnsight 0.8.x has it (an upgrade that moves one fails here)."""
    from hones_nn.engine import nnsight_compat as compat

    for name in compat.__all__:
        assert getattr(compat, name) is not None, name
    assert callable(compat.push) and callable(compat.saves)
    assert {"HOT", "WARM"} <= compat.deployed_levels() and "nnsight" in compat.critical_packages()
