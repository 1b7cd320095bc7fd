"""Imports inside ldvc_d2 run one way: data -> models -> evaluation -> engine -> tools, with
``utils`` below them all; the shapes benchmark (``ldvc_d2.benchmarks``) is imported by none of them (only
by the package root and the app, a tool on top that nothing of the package imports), no method imports
another's folder, and no two ldvc_d2 modules import each other,
directly or round a longer circle.

Every module is parsed with ``ast`` (nothing is imported); an import anywhere in a file counts, at module
level or inside a function, and relative imports are resolved to absolute module names.
"""
import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "ldvc_d2"
METHODS = ("ldvc", "zegclip", "cliptrase", "deop", "c2s")
# (importer's package, imported packages it must not reach)
FORBIDDEN = [
    ("ldvc_d2.modeling", ("ldvc_d2.app", "ldvc_d2.benchmarks", "ldvc_d2.data", "ldvc_d2.evaluation", "ldvc_d2.engine")),
    ("ldvc_d2.data", ("ldvc_d2.app", "ldvc_d2.benchmarks", "ldvc_d2.modeling", "ldvc_d2.evaluation", "ldvc_d2.engine")),
    ("ldvc_d2.evaluation", ("ldvc_d2.app", "ldvc_d2.benchmarks", "ldvc_d2.engine")),
    ("ldvc_d2.engine", ("ldvc_d2.app", "ldvc_d2.benchmarks",)),
    ("ldvc_d2.utils", ("ldvc_d2.app", "ldvc_d2.benchmarks", "ldvc_d2.data", "ldvc_d2.modeling", "ldvc_d2.evaluation",
                       "ldvc_d2.engine")),
] + [(p, ("ldvc_d2.app",)) for p in ("ldvc_d2.benchmarks", "ldvc_d2.predictor", "ldvc_d2.checkpoint",
                                     "ldvc_d2.config", "ldvc_d2.solver", "ldvc_d2.compat")
] + [(f"ldvc_d2.modeling.{m}", tuple(f"ldvc_d2.modeling.{o}" for o in METHODS if o != m)) for m in METHODS]


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def module_files(package_dir: Path) -> Dict[str, Path]:
    """{absolute module name: file} of every module of the package at ``package_dir``."""
    root = package_dir.parent
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, known: Set[str]) -> Iterator[Tuple[str, int]]:
    """(absolute name, line) of every module of ``name``'s top package that module ``name`` imports anywhere
    in its file. ``from X import y`` names X.y when that is a module of ``known`` (a submodule imported by
    name), else X."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        for target in targets:
            if _inside(target, name.partition(".")[0]):
                yield target, node.lineno


def import_graph(package_dir: Path) -> Dict[str, Dict[str, int]]:
    """{module: {imported ldvc_d2 module: first line}} of the package at ``package_dir``."""
    files = module_files(package_dir)
    graph: Dict[str, Dict[str, int]] = {}
    for name, path in files.items():
        edges = graph.setdefault(name, {})
        for target, line in imported_modules(name, path, set(files)):
            if target != name:
                edges.setdefault(target, line)
    return graph


def direction_violations(graph: Dict[str, Dict[str, int]], package: str = "ldvc_d2") -> List[str]:
    rules = [(src.replace("ldvc_d2", package, 1), tuple(d.replace("ldvc_d2", package, 1) for d in dst))
             for src, dst in FORBIDDEN]
    found = []
    for module, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            for importer, banned in rules:
                if _inside(module, importer) and any(_inside(target, b) for b in banned):
                    found.append(f"{module} (line {line}) imports {target}")
    return found


def import_cycles(graph: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE_DIR)


def test_imports_run_one_way(graph):
    assert direction_violations(graph) == []


def test_no_import_cycles(graph):
    assert import_cycles(graph) == []


def test_the_shapes_benchmark_is_one_package_imported_by_the_package_root_and_the_app_only(graph):
    importers = {m for m, edges in graph.items() for t in edges if _inside(t, "ldvc_d2.benchmarks")}
    outside = {m for m in importers if not _inside(m, "ldvc_d2.benchmarks")}
    assert "ldvc_d2" in outside and {m for m in outside if not _inside(m, "ldvc_d2.app")} == {"ldvc_d2"}
    assert not [m for m in graph if "shapes" in m and not _inside(m, "ldvc_d2.benchmarks")]


def test_the_class_lists_import_nothing_of_the_package(graph):
    """datasets/_prep_utils.py loads them by path, without the package (no torch, no detectron2)."""
    for name in ("builtin_classes", "ade_full_classes", "context459_classes"):
        assert graph[f"ldvc_d2.data.datasets.{name}"] == {}, name


def _write(root: Path, files: Dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_checks_find_planted_bad_imports(tmp_path):
    """A copy of the rules on a made-up package: each planted import is reported, relative ones resolved,
    function-level ones included."""
    package = _write(tmp_path, {
        "pkg/__init__.py": "from . import modeling, data\n",
        "pkg/modeling/__init__.py": "",
        "pkg/modeling/ldvc/__init__.py": "from ..zegclip.head import Head\n",
        "pkg/modeling/zegclip/__init__.py": "",
        "pkg/modeling/zegclip/head.py": "def f():\n    from ...engine import loop\n",
        "pkg/engine/__init__.py": "",
        "pkg/engine/loop.py": "import pkg.modeling.zegclip.head\n",
        "pkg/data/__init__.py": "from .a import x\n",
        "pkg/data/a.py": "def g():\n    from pkg.data import b\n",
        "pkg/data/b.py": "from . import a\nfrom pkg.benchmarks.shapes import world\n",
        "pkg/benchmarks/__init__.py": "",
        "pkg/benchmarks/shapes/__init__.py": "",
        "pkg/benchmarks/shapes/world.py": "",
    })
    graph = import_graph(package)
    assert graph["pkg.modeling.ldvc"] == {"pkg.modeling.zegclip.head": 1}
    assert graph["pkg.data.a"] == {"pkg.data.b": 2}
    assert direction_violations(graph, "pkg") == [
        "pkg.data.b (line 2) imports pkg.benchmarks.shapes.world",
        "pkg.modeling.ldvc (line 1) imports pkg.modeling.zegclip.head",
        "pkg.modeling.zegclip.head (line 2) imports pkg.engine.loop",
    ]
    assert import_cycles(graph) == [["pkg.data.a", "pkg.data.b"],
                                    ["pkg.engine.loop", "pkg.modeling.zegclip.head"]]

