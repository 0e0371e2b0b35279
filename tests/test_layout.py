"""The package reads top to bottom: modules sit in layers, imports only point down (or sideways), there is
no import cycle (function-level imports included), and no module is over 450 lines.

The layers, lowest first, by folder: an entry names a subpackage (matching the package and every module in
it) or one module; the longest matching entry wins, so a folder whose modules span layers lists the
exceptions (e.g. `evaluation.metrics`, which the tasks use, sits below the `evaluation.stage` that runs
models). A module no entry matches sits in the lowest layer its imports allow; list it when it should
sit higher.
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
    ("basics", ("distillkit_scd", "utils", "config.methods", "config.stages", "reporting.paper_reference")),
    ("data and math", ("tasks", "data.collate", "data.formatting", "data.fetch", "evaluation.metrics",
                       "evaluation.chat_metrics", "evaluation.scoring", "losses", "schedules",
                       "models.checkpoints")),
    ("recipe", ("config", "data.check", "evaluation.selection")),
    ("models", ("models", "teachers.pool", "evaluation.generation", "pipeline.workspace")),
    ("training pieces", ("training", "teachers", "schedules.scd_selector", "evaluation.results",
                         "evaluation.loss_scores")),
    ("stages", ("training.sft", "training.distill", "evaluation.stage", "evaluation.baselines", "reporting")),
    ("orchestration", ("pipeline", "toy", "integrations", "cli", "__main__")),
]


def _packages() -> set[str]:
    return {name for name, file in _modules().items() if file.name == "__init__.py"}


def _modules() -> dict[str, Path]:
    """Dotted module name (without the package prefix; the package itself is `distillkit_scd`) → file."""
    out = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts) or "distillkit_scd"] = file
    return out


_PACKAGES = _packages()


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
                    found.update(_outer_packages(name, short, modules))
    found.discard(name)
    return found


def _outer_packages(name: str, target: str, modules: dict[str, Path]) -> set[str]:
    """Importing `a.b.c` runs `a/__init__` and `a/b/__init__` first, unless `name` is already inside them
    (a module's own package is initialising when it imports a sibling)."""
    parts = target.split(".")
    packages = {".".join(parts[:i]) for i in range(1, len(parts))}
    return {p for p in packages if p in modules and not (name == p or name.startswith(p + "."))}


def _listed_layer(name: str) -> int | None:
    """The layer of the longest entry equal to `name` or a package above it. A package's `__init__` is
    placed by its imports (a light one re-exports its contract names, an empty one sits in the lowest
    layer), so importing `pipeline.workspace` does not count as importing orchestration."""
    best = None
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            match = name.startswith(member + ".") or name == member and name not in _PACKAGES
            if match and (best is None or len(member) > best[0]):
                best = (len(member), index)
    return None if best is None else best[1]


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


def _upward(graph: dict[str, set[str]]) -> list[str]:
    layer = _layers(graph)
    return sorted(f"{name} ({LAYERS[layer[name]][0]}) imports {dep} ({LAYERS[layer[dep]][0]})"
                  for name, deps in graph.items() for dep in deps if layer[dep] > layer[name])


def test_no_module_imports_a_higher_layer():
    """Imports point down or sideways in the layer table, never up; a listed module that imports an unlisted
    one that sits higher fails too."""
    bad = _upward(_graph())
    assert not bad, "imports that point up a layer:\n" + "\n".join(bad)


def test_layer_check_finds_a_planted_upward_import():
    """The check above can fail: a math module importing a stage, and a folder's exception (the metrics the
    tasks use) importing its folder's stage; an entry for a module beats its folder's."""
    graph = {"losses.divergences": {"training.distill"}, "training.distill": set(),
             "evaluation.metrics": {"evaluation.stage"}, "evaluation.stage": {"evaluation.metrics"}}
    assert _upward(graph) == ["evaluation.metrics (data and math) imports evaluation.stage (stages)",
                              "losses.divergences (data and math) imports training.distill (stages)"]
    assert _listed_layer("evaluation.metrics") < _listed_layer("evaluation.stage") == _listed_layer("reporting.x")


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


TOP_LEVEL = {"distillkit_scd", "__main__", "cli", "toy"}


def test_top_level_holds_only_entry_points():
    """Modules live in the folders of the layer table; the top level keeps the package, the command line and
    the toy (`python -m distillkit_scd`, `distillkit-scd = distillkit_scd.cli:main`)."""
    stray = sorted(name for name in _modules() if "." not in name and name not in TOP_LEVEL | _PACKAGES)
    assert not stray, f"put these modules into a folder (see LAYERS in tests/test_layout.py): {stray}"


def test_readme_module_table_names_every_module():
    """README's module table (one row per folder) names every module, so it stays true to the tree."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| folder | modules: what they hold |"):]
    table = table[:table.index("\n\n")]
    missing = sorted(name for name in _modules() if name.count(".") == 1 and name not in _PACKAGES
                     and name.split(".")[0] not in ("tasks", "integrations")
                     and f"`{name.split('.')[1]}`" not in table)
    assert not missing, f"add these modules to README's module table: {missing}"
