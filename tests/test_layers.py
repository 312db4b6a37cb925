"""The package shows its layers: no import circle, and no module imports from a layer above its own.

Layers, bottom up (a module may import its own layer and those below, never a sibling layer of the
same rank or one above): errors, config, rundir, plots | events, training | analysis, sweeps | board,
experiments, cli (siblings never import each other). Function-level imports count too.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "centerexp"
RANK = {
    "errors": 0,
    "config": 1,
    "rundir": 2,
    "plots": 3,
    "events": 3,
    "training": 4,
    "analysis": 4,
    "sweeps": 5,
    "board": 5,
    "experiments": 6,
    "cli": 7,
    "__main__": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("centerexp"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("centerexp"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    unknown = {layer(m) for m in graph()} - set(RANK) - {"__init__"}
    assert not unknown, f"modules outside the declared layers: {unknown}"


def test_no_upward_or_sideways_import():
    bad = []
    for module, targets in graph().items():
        if layer(module) == "__init__":
            continue
        for target in targets:
            if layer(target) == "__init__" or layer(target) == layer(module):
                continue
            if RANK[layer(target)] >= RANK[layer(module)]:
                bad.append(f"{module} -> {target}")
    assert not bad, "imports that go up or sideways:\n" + "\n".join(sorted(bad))


def test_import_graph_is_acyclic():
    edges = graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle.extend([*stack[stack.index(nxt) :], nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*stack, nxt]):
                return True
        state[node] = 2
        return False

    for node in sorted(edges):
        if state.get(node) is None and visit(node, [node]):
            break
    assert not cycle, " -> ".join(cycle)
