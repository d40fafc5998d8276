"""The package's imports keep to docs/ARCHITECTURE.md: no import from a higher layer, no cycles.

The sources are parsed with ``ast`` (nothing is imported). Every import counts, module level,
inside a function or under ``if TYPE_CHECKING:``, for both checks: a function-local import is
still a dependency, and hiding a cycle inside a function only delays it to call time. An edge goes
to the module an import names (``from pkg import sub`` to ``pkg.sub`` when that is a module, else
to ``pkg``'s ``__init__``). A string that names a module of the package (``"pkg.mod"`` or
``"pkg.mod:function"``, what ``importlib.import_module`` is given, e.g. cli.py's pipeline-command
table) is an import too.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = "saq_lightning"
REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / PACKAGE

#: docs/ARCHITECTURE.md's layer table: a module may import its own rank and the ranks below it.
#: The key is the first component below the package (a subpackage or a top-level module).
LAYERS: dict[str, int] = {
    "__init__": 0,  # the package root: ``__version__`` only
    "files": 0,  # leaf modules: import nothing of the package, every layer may import them
    "ranks": 0,
    "quiet": 0,
    "errors": 0, "mismatches": 0, "seeding": 0, "devices": 0, "distributed": 0,  # leaf modules of issue 24 (UserError, the one copy of each twin)
    "sampling": 1,
    "quant": 1,
    "models": 2,
    "data": 3,
    "metrics": 3,
    "outputs": 3,
    "alignment": 4,  # the method without Lightning: never imports lightning/ or callbacks/
    "lightning": 5,
    "callbacks": 5,
    "students": 5,  # --student loading: reads checkpoints (alignment/checkpointing.py), Lightning-free
    "cli": 6,  # entry points: may import everything
    "__main__": 6,
    "commands": 6,
    "user_errors": 6,
}
#: Layers that must not import each other although the ranks would allow it.
INDEPENDENT: set[frozenset[str]] = {frozenset({"sampling", "quant"}), frozenset({"models", "quant"})}


Graph = Mapping[str, Iterable[tuple[str, int]]]
#: a dotted module path, optionally ``:attribute`` (an import given as a string)
IMPORT_STRING = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?::[A-Za-z_]\w*)?")


def module_name(path: Path, root: Path = ROOT, package: str = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, list[tuple[str, int]]]:
    """``{module: [(imported package module, line), ...]}`` for every ``.py`` file below ``root``."""
    files = {module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, list[tuple[str, int]]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                match = IMPORT_STRING.fullmatch(node.value)
                if match is None or match.group(1).split(".")[0] != package:
                    continue
                targets = [match.group(1)]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")
                    base = base[:len(base) - node.level + (1 if is_package else 0)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in files else stem for a in node.names]
            else:
                continue
            for target in targets:
                while target not in files and "." in target:  # `import a.b.c` names a.b.c
                    target = target.rsplit(".", 1)[0]
                if target in files and target != name and target.split(".")[0] == package:
                    edges.append((target, node.lineno))
        graph[name] = edges
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(graph: Graph, layers: Mapping[str, int] = LAYERS,
                   independent: Iterable[frozenset[str]] = INDEPENDENT) -> list[str]:
    """Every import of a module from a higher layer (or between two independent layers)."""
    bad = []
    for module, edges in graph.items():
        own = _layer(module)
        for target, line in edges:
            other = _layer(target)
            if layers[other] > layers[own] or frozenset({own, other}) in independent:
                why = f"{other} is above {own}" if layers[other] > layers[own] else f"{own} and {other} are independent"
                bad.append(f"{module}:{line} imports {target} ({why})")
    return bad


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_layer_is_in_the_table_and_the_table_in_the_docs():
    assert {_layer(m) for m in import_graph()} <= set(LAYERS)
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    table = doc.split("## Layers and allowed imports", 1)[1].split("```")[1]
    named = set(re.findall(r"([a-z_]+)(?:\.py|/)", table))
    assert named == set(LAYERS) - {"__init__"}


def test_no_import_from_a_higher_layer():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == []


def write_package(pkg: Path, files: Mapping[str, str]) -> Path:
    """A package on disk: ``files`` maps paths relative to ``pkg`` to their text."""
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def test_the_checker_reports_an_upward_import_and_a_cycle(tmp_path):
    pkg = write_package(tmp_path / "pkg", {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "from . import b\n",
        "low/b.py": "def f():\n    from .a import thing\n",
        "high/__init__.py": "",
        "high/c.py": "import pkg.low.a\n",
        "low/d.py": "from ..high import c\n",
    })
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.high.c"] == [("pkg.low.a", 1)]
    assert upward_imports(graph, {"low": 0, "high": 1, "__init__": 2}, ()) == [
        "pkg.low.d:1 imports pkg.high.c (high is above low)"]
    assert cycles(graph) == [["pkg.low.a", "pkg.low.b"]]


def test_the_checker_counts_a_module_named_in_a_string_as_an_import(tmp_path):
    pkg = write_package(tmp_path / "pkg", {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/table.py": 'COMMANDS = {"run": "pkg.high.c:main"}\nNOTE = "not.a.module of pkg"\n',
        "high/__init__.py": "",
        "high/c.py": "def main():\n    pass\n",
    })
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.low.table"] == [("pkg.high.c", 1)]
    assert upward_imports(graph, {"low": 0, "high": 1, "__init__": 2}, ()) == [
        "pkg.low.table:1 imports pkg.high.c (high is above low)"]


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of every module a file imports (any level, strings not counted)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", ["alignment", "students"])
def test_the_alignment_and_students_layers_import_nothing_of_lightning(layer):
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"saq_lightning/{layer}/ is missing"
    used = {p.name: third_party_imports(p) & {"lightning", "pytorch_lightning", "lightning_fabric"}
            for p in files}
    assert {name: found for name, found in used.items() if found} == {}


def test_the_lightning_folder_holds_only_lightning_glue():
    """Every module of lightning/ uses Lightning, or serves only the fit glue (its run lock and
    the early SIGUSR1 hand-off of the SLURM requeue); the method lives in alignment/."""
    glue_without_import = {"__init__.py", "run_lock.py", "early_signals.py"}
    without = {p.name for p in (ROOT / "lightning").glob("*.py")
               if not third_party_imports(p) & {"lightning", "pytorch_lightning"}}
    assert without <= glue_without_import
