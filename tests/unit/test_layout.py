"""The import structure: no circle (type-only imports included), the library never imports the Ray layer or Ray."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("downcity", "actors")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
    }


def _imported(tree: ast.Module, module: str, known: dict[str, Path]) -> Iterator[tuple[str, ast.stmt]]:
    """Every project module `module` imports, anywhere in the file (functions and TYPE_CHECKING included)."""
    package = module if known[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                # `from pkg import submodule` imports the submodule; `from mod import name` imports mod.
                yield (f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base), node


def _graph() -> dict[str, set[str]]:
    known = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = {name for name, _ in _imported(tree, module, known) if name in known and name != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_form_a_circle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_sees_a_type_only_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_library_never_imports_the_ray_layer() -> None:
    upward = {
        (module, target) for module, targets in _graph().items() if module.startswith("downcity") for target in targets
    }
    assert {(module, target) for module, target in upward if target.startswith("actors")} == set()


def test_the_library_imports_ray_only_inside_functions() -> None:
    offenders = []
    for module, path in _modules().items():
        if not module.startswith("downcity"):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if isinstance(node, ast.If):
                names = [
                    alias.name if isinstance(inner, ast.Import) else inner.module or ""
                    for inner in node.body
                    if isinstance(inner, ast.Import | ast.ImportFrom)
                    for alias in (inner.names if isinstance(inner, ast.Import) else [inner.names[0]])
                ]
            offenders.extend((module, name) for name in names if name == "ray" or name.startswith("ray."))
    assert offenders == []


def test_the_graph_reads_imports_of_the_real_tree() -> None:
    graph = _graph()
    assert "downcity.ai.context" in graph["downcity.ai.provider"]
    assert "downcity.auth.caller" in graph["downcity.calls.call"]


# Each top-level module or package of the library, by layer: a module imports only from lower layers (or its own
# package). README.md's Layout section names the same order.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("settings", "types", "errors", "metrics", "accounts"),
    ("store",),
    ("quotas",),
    ("secrets", "cities", "ai", "client", "ledger"),
    ("auth", "env", "gateway", "demo"),
    ("readiness", "cli"),
    ("runtime",),
    ("calls",),
    ("jobs",),
    ("local", "http"),
)


def _room(module: str) -> str:
    parts = module.split(".")
    return "actors" if parts[0] == "actors" else parts[1] if len(parts) > 1 else "downcity"


def _rank(room: str) -> int:
    if room == "actors":
        return len(LAYERS) + 1
    if room == "downcity":
        return len(LAYERS)
    return next(rank for rank, rooms in enumerate(LAYERS) if room in rooms)


def test_every_library_room_has_a_layer() -> None:
    rooms = {_room(module) for module in _modules()} - {"actors", "downcity"}
    assert rooms == {room for layer in LAYERS for room in layer}


def test_imports_only_run_down_the_layers() -> None:
    upward = sorted(
        (module, target)
        for module, targets in _graph().items()
        for target in targets
        if _room(module) != _room(target) and _rank(_room(target)) >= _rank(_room(module))
    )
    assert upward == []
