"""The package reads top to bottom: modules sit in layers, imports only point down (or sideways), there is
no import cycle (function-level imports included), and no module is over 450 lines.

The layers, lowest first. A module missing from the table sits in the lowest layer its imports allow (so
adding one needs no edit here); list it when it should sit higher. `tasks.*` and `integrations.*` are
matched by prefix.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distillkit_scd"
MAX_LINES = 450
# Import edges that close a cycle today, with the reason; the entry must go once the edge is gone.
CYCLE_EDGES: dict[tuple[str, str], str] = {}
# Modules allowed over MAX_LINES for now, with the reason; the entry must go once the file is split.
OVER_LIMIT: dict[str, str] = {}

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("basics", ("distillkit_scd", "methods", "atomic", "hashing", "logging_utils", "distributed", "sharding",
                "paper_reference", "interrupts")),
    ("data and files", ("tasks", "collate", "formatting", "evaluation", "chat_metrics",
                                "scoring", "checkpoints", "data_fetch")),
    ("math", ("divergences", "adaptive_weight", "taid_state", "teacher_signal", "chunked_loss", "losses", "liger_loss",
              "chunk_kernel", "schedules", "lr_schedules")),
    ("recipe", ("config_schema", "config_loading", "config", "launch", "selection", "data_check")),
    ("models", ("models", "model_refs", "model_outputs", "teachers", "generation")),
    ("training pieces", ("trainer", "callbacks", "training_args", "scd", "weighting", "signal_cache", "workspace",
                         "results", "loss_scores")),
    ("stages", ("sft", "distill", "evaluate", "figures", "report", "baselines")),
    ("orchestration", ("pipeline", "plan", "plan_time", "sweep", "toy", "integrations", "cli", "__main__")),
]


def _modules() -> dict[str, Path]:
    """Dotted module name (without the package prefix; the package itself is `distillkit_scd`) → file."""
    out = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts) or "distillkit_scd"] = file
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under `if TYPE_CHECKING:` (annotations only: not an import at run time)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _imports(name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules `file` imports anywhere (module level or inside functions)."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".") if package and package != "distillkit_scd" else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(["distillkit_scd", *base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target == "distillkit_scd":
                found.add("distillkit_scd")
            elif target.startswith("distillkit_scd."):
                short = target[len("distillkit_scd."):]
                if short in modules:
                    found.add(short)
    found.discard(name)
    return found


def _listed_layer(name: str) -> int | None:
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if name == member or name.startswith(member + ".") and member in ("tasks", "integrations"):
                return index
    return None


def _layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's layer: listed, else the highest layer among what it imports (unlisted modules placed
    in import order; a cycle among unlisted modules leaves them in the lowest layer, the cycle test fails)."""
    out = {name: layer for name in graph if (layer := _listed_layer(name)) is not None}
    for _ in range(len(graph)):
        for name in graph:
            if _listed_layer(name) is None:
                out[name] = max((out.get(dep, 0) for dep in graph[name]), default=0)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, file, modules) for name, file in modules.items()}


def test_no_module_imports_a_higher_layer():
    """Imports point down or sideways in the layer table, never up; a listed module that imports an unlisted
    one that sits higher fails too."""
    graph = _graph()
    layer = _layers(graph)
    bad = [f"{name} ({LAYERS[layer[name]][0]}) imports {dep} ({LAYERS[layer[dep]][0]})"
           for name, deps in graph.items() for dep in deps if layer[dep] > layer[name]]
    assert not bad, "imports that point up a layer:\n" + "\n".join(sorted(bad))


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    """The import graph (function-level imports included) has no cycle (besides CYCLE_EDGES, still there)."""
    graph = _graph()
    stale = [edge for edge in CYCLE_EDGES if edge[1] not in graph.get(edge[0], ())]
    assert not stale, f"no longer imported, remove from CYCLE_EDGES in tests/test_layout.py: {stale}"
    for source, target in CYCLE_EDGES:
        graph[source] = graph[source] - {target}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    """The check above can fail: a three-module loop and a self-contained DAG."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_module_size():
    """No module over 450 lines (one concept per file); OVER_LIMIT entries must still need their pass."""
    too_long, stale = [], []
    for name, file in _modules().items():
        lines = len(file.read_text(encoding="utf-8").splitlines())
        if name in OVER_LIMIT and lines <= MAX_LINES:
            stale.append(f"{name}.py ({lines} lines)")
        elif name not in OVER_LIMIT and lines > MAX_LINES:
            too_long.append(f"{name}.py ({lines} lines)")
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concept): {too_long}"
    assert not stale, f"now within {MAX_LINES} lines, remove from OVER_LIMIT in tests/test_layout.py: {stale}"
