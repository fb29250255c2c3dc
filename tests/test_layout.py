"""The layout's rules, read from the code (`ast`, nothing imported or run).

- Only `herder/app.py` (the composition root) and `herder/api/` itself
  import `herder.api`; only they index the app (`request.app[...]`).
- `herder/runtime/` and `herder/ledger/` import no service and nothing of
  the API: just each other's and the plain modules in `BASE_MODULES`.
- No import cycle among herder's modules, `TYPE_CHECKING` imports counted.
- No module over `MAX_LINES` lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "herder"
MAX_LINES = 800
# What the runtime and the ledger may import besides their own packages.
BASE_MODULES = frozenset({"herder", "herder.errors", "herder.settings", "herder.bundled"})


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    root = package.parent
    return {module_name(p, root): p for p in sorted(package.rglob("*.py"))}


def imported(path: Path, known: set[str], root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """(line, module) for every herder module `path` imports, wherever the
    import stands (inside functions and `if TYPE_CHECKING:` too)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield node.lineno, submodule if submodule in known else source


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    found = modules(package)
    known = set(found)
    root = package.parent
    return {
        name: {target for _, target in imported(path, known, root) if target in known}
        for name, path in found.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a
    module importing itself), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def indexes_the_app(path: Path) -> list[int]:
    """Lines where `request.app[...]` is read or set."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "app"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "request"
    ]


def _in_api_or_root(name: str) -> bool:
    return name == "herder.app" or name == "herder.api" or name.startswith("herder.api.")


def test_only_the_composition_root_imports_the_api() -> None:
    found = modules()
    known = set(found)
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for name, path in found.items()
        if not _in_api_or_root(name)
        for line, target in imported(path, known)
        if target == "herder.api" or target.startswith("herder.api.")
    ]
    assert wrong == []


def test_only_the_api_and_the_root_index_the_app() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line}"
        for name, path in modules().items()
        if not _in_api_or_root(name)
        for line in indexes_the_app(path)
    ]
    assert wrong == []


def test_runtime_and_ledger_import_no_service() -> None:
    found = modules()
    known = set(found)
    wrong = []
    for name, path in found.items():
        layer = name.split(".")[:2]
        if layer not in (["herder", "runtime"], ["herder", "ledger"]):
            continue
        for line, target in imported(path, known):
            if not target.startswith("herder"):
                continue
            allowed = target in BASE_MODULES or target.split(".")[:2] in (
                ["herder", "runtime"],
                ["herder", "ledger"],
            )
            if not allowed:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert wrong == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_no_module_over_the_line_limit() -> None:
    long = {
        str(path.relative_to(ROOT)): count
        for path in PACKAGE.rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


# -- the checks themselves catch what they are for ----------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = tmp_path / "herder" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "herder"


def test_cycles_are_found_type_checking_imports_included(tmp_path: Path) -> None:
    package = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from . import b\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\n",
            "c.py": "def f():\n    from herder.a import x\n",
            "d.py": "from .a import y\n",
        },
    )
    assert cycles(import_graph(package)) == [["herder.a", "herder.b", "herder.c"]]


def test_relative_imports_resolve_to_the_module_imported(tmp_path: Path) -> None:
    package = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "api/__init__.py": "from . import keys\n",
            "api/keys.py": "from ..errors import E\n",
            "errors.py": "",
            "runtime/__init__.py": "",
            "runtime/docker.py": "from ..api.keys import K\nfrom .. import errors\n",
        },
    )
    assert import_graph(package) == {
        "herder": set(),
        "herder.api": {"herder.api.keys"},
        "herder.api.keys": {"herder.errors"},
        "herder.errors": set(),
        "herder.runtime": set(),
        "herder.runtime.docker": {"herder.api.keys", "herder.errors"},
    }


def test_indexing_the_app_is_found(tmp_path: Path) -> None:
    path = tmp_path / "service.py"
    path.write_text("def f(request):\n    x = request.app[KEY]\n    request.app[KEY] = x\n")
    assert indexes_the_app(path) == [2, 3]
