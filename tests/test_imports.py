"""The import graph inside `vld` has no circle (an AST walk over src/vld: every `import vld...`
and `from vld... import ...`, at module level or inside a function), not even through imports
for type hints only (`if TYPE_CHECKING:`), and evaluation and the report do not import each
other (what both need, statistics and result schemas, sits apart)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _executed(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (imports for type hints only never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = getattr(child, "test", None) if isinstance(child, ast.If) else None
            if test is not None and (getattr(test, "id", None) == "TYPE_CHECKING"
                                     or getattr(test, "attr", None) == "TYPE_CHECKING"):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def import_graph(walk=_executed) -> dict[str, set[str]]:
    """{module: the vld modules it imports}; `walk` yields the AST nodes searched (by default
    those that run: imports for type hints only are left out)."""
    modules = {module_name(p): p for p in (SRC / "vld").rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` names a submodule when one exists, else an attribute of pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:  # `import vld.x.y` of a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("vld"):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle_inside_vld():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_circle():
    graph = {"vld.a": {"vld.b"}, "vld.b": {"vld.c"}, "vld.c": {"vld.a"}, "vld.d": set()}
    assert find_cycle(graph) == ["vld.a", "vld.b", "vld.c", "vld.a"]
    assert find_cycle({"vld.a": {"vld.b"}, "vld.b": set()}) is None
    graph = import_graph()
    assert "vld.pipeline.params" in graph["vld.pipeline.pretrain"]  # the walk sees real imports


def test_no_import_circle_even_through_type_hints():
    cycle = find_cycle(import_graph(walk=ast.walk))
    assert cycle is None, "import circle (counting `if TYPE_CHECKING:` imports): " + " -> ".join(cycle)


def test_the_full_walk_sees_type_only_imports():
    # families.py names Plan and Variant (vld.pipeline.plan) for its type hints only
    assert "vld.pipeline.plan" in import_graph(walk=ast.walk)["vld.pipeline.families"]
    assert "vld.pipeline.plan" not in import_graph()["vld.pipeline.families"]
    # a circle closed only by a type-only import is found
    graph = {"vld.a": {"vld.b"}, "vld.b": set()}
    type_only = {"vld.a": {"vld.b"}, "vld.b": {"vld.a"}}
    assert find_cycle(graph) is None and find_cycle(type_only) == ["vld.a", "vld.b", "vld.a"]


def crossings(graph: dict[str, set[str]], one: str, other: str) -> list[str]:
    """Imports from package `one` into package `other` or back, as "importer -> imported"."""
    inside = lambda module, package: module == package or module.startswith(package + ".")
    return sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                  if (inside(module, one) and inside(target, other)) or (inside(module, other) and inside(target, one)))


def test_evaluation_and_report_do_not_import_each_other():
    # Every import counts here, type-only ones too: a type hint still ties the two together.
    found = crossings(import_graph(walk=ast.walk), "vld.eval", "vld.report")
    assert not found, "imports between vld.eval and vld.report: " + ", ".join(found)


def test_the_crossing_finder_finds_planted_imports():
    graph = {"vld.eval.khop": {"vld.stats", "vld.report.stats"}, "vld.report.build": {"vld.eval.variant"},
             "vld.report": {"vld.eval"}, "vld.evaluation": {"vld.report_x"}, "vld.stats": set()}
    assert crossings(graph, "vld.eval", "vld.report") == [
        "vld.eval.khop -> vld.report.stats", "vld.report -> vld.eval", "vld.report.build -> vld.eval.variant"]
    # The real graph sees a real import between the two packages' neighbours.
    assert "vld.stats" in import_graph(walk=ast.walk)["vld.eval.khop"]
