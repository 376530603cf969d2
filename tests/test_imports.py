"""The import graph of sozu/, read from the source: no circle, and no gevent on the master's side.

Every import counts, those inside functions too (a lazy import is still a dependency). For
gevent the graph does not follow the imports made only in a worker, each named below with where
it runs (docs/architecture.md, "Process model"); any other path from the master's side to a
module that imports gevent fails.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sozu"
# Where the master's side starts: the master's start-up and sozuctl.
MASTER_SIDE_ROOTS = ("sozu.cli", "sozu.startup", "sozu.ctl.cli")
WORKER_ONLY_IMPORTS = {
    # Master.spawn_worker, in the child it has just forked, which from then on is a worker.
    ("sozu.master", "sozu.worker"),
    # tls.serve, the connection greenlet of an https listener with expect_proxy; the master
    # uses sozu.tls for tls.check_order only.
    ("sozu.tls", "sozu.tcp"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(sozu module -> the sozu modules it imports, sozu module -> the other top-level packages)."""
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in files}
    outside: dict[str, set[str]] = {name: set() for name in files}

    def add(name: str, target: str) -> None:
        if target.split(".")[0] != "sozu":
            outside[name].add(target.split(".")[0])
            return
        while target not in files:  # `from sozu.x import name`: the module sozu.x
            target = target.rpartition(".")[0]
        parent = target
        while parent:  # importing sozu.a.b runs sozu/a/__init__.py first
            if parent != name:
                edges[name].add(parent)
            parent = parent.rpartition(".")[0]

    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(name, alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([node.module] if node.module else []))
                for alias in node.names:  # `from sozu import address`: the module sozu.address
                    candidate = f"{base}.{alias.name}"
                    add(name, candidate if candidate in files else base)
    return edges, outside


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or of one importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def master_side(edges: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(MASTER_SIDE_ROOTS)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += [t for t in edges[node] if (node, t) not in WORKER_ONLY_IMPORTS]
    return seen


def test_the_graph_is_read_from_the_code():
    edges, outside = graph()
    assert "sozu.commands" in edges["sozu.master"] and "sozu.worker" in edges["sozu.master"]
    assert "sozu.address" in edges["sozu.config"]
    assert "gevent" in outside["sozu.worker"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    found = cycles(graph()[0])
    assert found == [], f"import circles: {found}"


def test_no_gevent_on_the_masters_side():
    edges, outside = graph()
    side = master_side(edges)
    assert {"sozu.master", "sozu.commands", "sozu.command_socket", "sozu.fanout", "sozu.upgrade",
            "sozu.listeners", "sozu.state_saver"} <= side
    assert "sozu.worker" not in side
    with_gevent = sorted(name for name in side if "gevent" in outside[name])
    assert with_gevent == [], f"modules of the master's side that import gevent: {with_gevent}"
