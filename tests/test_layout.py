"""The package's layout rules, read from the source with ``ast``: no import cycles, and the
library, the entry points and the benchmarks import each other only one way.

Two graphs over the modules of ``src/lenet``: ``module`` holds the imports that run when a module
is imported (top level, class bodies, ``try``/``if`` blocks; not ``if TYPE_CHECKING:``), ``all``
adds the imports inside functions (they run later, but a cycle there is still a tangle). An
edge goes to the module named (``from lenet.models import x`` -> ``lenet.models``,
``from lenet import data`` -> ``lenet.data``), not to the packages above it.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ENTRY_POINTS = ("lenet.cli", "lenet.bench", "lenet.__main__")  # and their submodules
INFERENCE = (
    "lenet.predictor",
    "lenet.evaluation",
    "lenet.server",
    "lenet.httpguard",
    "lenet.export",
    "lenet.runtime",
)
TRAINING = ("lenet.engine", "lenet.distributed")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every module under src/lenet."""
    out = {}
    for f in sorted((SRC / "lenet").rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (f, is_package)
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, bool, int]]:
    """(imported lenet module, at import time?, line) for each import statement in ``name``."""
    path, is_package = MODULES[name]
    package = name if is_package else name.rpartition(".")[0]
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # for type checkers only: never runs
            now = at_import and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            if isinstance(child, ast.Import):
                found.extend((a.name, now, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolve against this module's package
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    found.append((sub if sub in MODULES else base, now, child.lineno))
            visit(child, now)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), True)
    return [(t, now, line) for t, now, line in found if t in MODULES and t != name]


EDGES = {name: _imports(name) for name in MODULES}


def graph(at_import_only: bool) -> dict[str, set[str]]:
    """Module -> the lenet modules it imports (at import time only, or anywhere)."""
    g: dict[str, set[str]] = defaultdict(set)
    for name, edges in EDGES.items():
        g[name].update(t for t, now, _ in edges if now or not at_import_only)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                connect(w)
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

    for v in sorted(g):
        if v not in index:
            connect(v)
    return found


def reachable(g: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for w in g.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def _inside(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _where(importer: str, target_packages: tuple[str, ...]) -> list[str]:
    return [
        f"{importer}:{line} imports {t}"
        for t, _, line in EDGES[importer]
        if _inside(t, target_packages)
    ]


def test_the_graph_sees_the_package():
    assert {"lenet", "lenet.cli", "lenet.engine", "lenet.models.registry"} <= set(MODULES)
    assert "lenet.runtime" in graph(True)["lenet.predictor"]


def test_httpguard_is_a_leaf():
    """The service's guards import no other lenet module: the CLI reads its helpers at start-up."""
    assert graph(False)["lenet.httpguard"] == set()


@pytest.mark.parametrize("at_import_only", [True, False], ids=["module-level", "with-functions"])
def test_no_import_cycles(at_import_only):
    assert cycles(graph(at_import_only)) == []


def test_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_library_does_not_import_entry_points():
    """The CLI and the benchmarks sit on top of the library; nothing below reaches up."""
    library = [m for m in MODULES if not _inside(m, ENTRY_POINTS)]
    bad = [w for m in library for w in _where(m, ("lenet.cli", "lenet.bench"))]
    assert bad == []


def test_bench_is_imported_only_by_its_verb():
    outside = [m for m in MODULES if not _inside(m, ("lenet.bench", "lenet.cli.bench"))]
    assert [w for m in outside for w in _where(m, ("lenet.bench",))] == []


@pytest.mark.parametrize("module", INFERENCE)
def test_inference_does_not_import_training(module):
    """Not directly and not through another module, counting imports inside functions."""
    g = graph(False)
    via = [module, *reachable(g, module)]  # who, on the way, imports training itself
    assert not reachable(g, module) & set(TRAINING), [w for m in via for w in _where(m, TRAINING)]
