"""The architecture, held against the code: layers point down, no import cycle, dagster only in the face.

Read from the sources' imports (``ast``), not by importing them, so a lazily imported name counts
as much as one imported at the top. Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import batch_pipelines

PACKAGE = Path(batch_pipelines.__file__).parent
#: Each layer and the layers it may import, bottom up (profiles is the leaf every layer reads).
LAYERS = {
    "profiles": set(),
    "storage": set(),
    "local_service": {"profiles"},
    "providers": {"profiles", "local_service"},
    "requests": {"profiles", "providers"},
    "results": {"profiles", "providers", "requests", "storage"},
    "submission": {"profiles", "providers", "requests", "storage"},
    "pipeline": {"profiles", "providers", "requests", "results", "storage", "submission"},
    "cli": {"profiles", "local_service", "providers"},
    "demo": {"profiles", "providers", "requests", "results", "storage", "submission", "pipeline"},
}
#: Where ``import dagster`` may stand.
DAGSTER_FACE = {"pipeline", "demo"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports when it runs (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = {
        id(node)
        for guard in ast.walk(tree)
        if isinstance(guard, ast.If) and "TYPE_CHECKING" in ast.unparse(guard.test)
        for stmt in guard.body
        for node in ast.walk(stmt)
    }
    here = _module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_belongs_to_a_layer():
    unplaced = sorted(m for m in MODULES if _layer(m) not in LAYERS and m != "batch_pipelines")
    assert not unplaced, f"modules outside every layer: {unplaced}"


def test_layers_import_only_the_layers_below():
    upward = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if (layer := _layer(module)) and (other := _layer(target)) and other != layer and other not in LAYERS[layer]
    ]
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_only_the_dagster_face_imports_dagster():
    outside = sorted(
        module
        for module, path in MODULES.items()
        if _layer(module) not in DAGSTER_FACE and any(m == "dagster" or m.startswith("dagster.") for m in _imports(path))
    )
    assert not outside, f"dagster imported outside {sorted(DAGSTER_FACE)}: {outside}"


def test_no_import_cycle():
    # A package's __init__ re-exporting its submodules is not a cycle with them.
    def edges(module: str) -> set[str]:
        return {t for t in GRAPH[module] if not (MODULES[t].name == "__init__.py" and module.startswith(t + "."))}

    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges(module)):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", batch_pipelines.__all__)
def test_every_exported_name_resolves(name):
    assert getattr(batch_pipelines, name) is not None


def test_layers_load_without_dagster():
    # The lower layers import in a process where the Dagster face was never loaded.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import batch_pipelines.local_service, batch_pipelines.providers, batch_pipelines.requests,"
        " batch_pipelines.results, batch_pipelines.storage, batch_pipelines.submission\n"
        "assert 'dagster' not in sys.modules, sorted(m for m in sys.modules if m.startswith('dagster'))[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_public_api_is_importable_by_its_documented_path():
    for module in ("batch_pipelines.pipeline", "batch_pipelines.submission", "batch_pipelines.requests", "batch_pipelines.results"):
        imported = importlib.import_module(module)
        missing = [n for n in getattr(imported, "__all__", []) if not hasattr(imported, n)]
        assert not missing, f"{module}.__all__ names what it does not define: {missing}"
