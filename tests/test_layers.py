"""Imports point down only, lanes do not import each other, and no module imports itself back.

Read from the source with ``ast`` (imports inside functions count too), so a lazy import cannot
hide a cycle or a layer broken upward.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = ["core", "advise", "store", "rollout", "lanes", "transport", "server", "testing", "bench", "demo", "deploy",
          "cli"]
"""Bottom to top (docs/architecture.md, "Layers"; the test harness and the demo run a server, the demo drives it
with the load generator (bench), the CLI runs them all; the advisor needs only the core, and the dashboard
shows its advice):
a module may import its own layer and the layers below it."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    """The inferlane modules ``path`` imports, resolved to existing modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("inferlane")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in imports_of(path, name):
            while target not in modules and "." in target:  # `from pkg import name` names a symbol
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name and not name.startswith(target + "."):
                edges[name].add(target)
    return {m: edges.get(m, set()) for m in modules}


def layer(module: str) -> tuple[str, str | None]:
    """(layer, sub-package): ``inferlane.lanes.batch.job`` → ("lanes", "batch")."""
    parts = module.split(".")
    if len(parts) < 2:
        return "", None
    return parts[1], parts[2] if len(parts) > 2 else None


def test_no_import_cycles_anywhere_in_src() -> None:
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_point_down_and_lanes_do_not_import_each_other() -> None:
    wrong = []
    for source, targets in graph().items():
        src_layer, src_pkg = layer(source)
        if src_layer not in LAYERS:
            continue  # the package root re-exports the public API
        for target in targets:
            dst_layer, dst_pkg = layer(target)
            if dst_layer not in LAYERS:
                continue
            if LAYERS.index(dst_layer) > LAYERS.index(src_layer):
                wrong.append(f"{source} imports {target} (a layer above)")
            elif src_layer == dst_layer == "lanes" and src_pkg != dst_pkg and dst_pkg is not None:
                wrong.append(f"{source} imports {target} (another lane)")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_graph_sees_lazy_imports() -> None:
    """The checks above would pass vacuously if function-level imports were missed."""
    g = graph()
    assert "inferlane.lanes.batch.ray_engine" in g["inferlane.lanes.batch.job"]  # imported inside run_batch
    assert "inferlane.core.inputs.values" in g["inferlane.core.codec"]
