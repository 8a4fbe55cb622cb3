"""The layering holds: no import cycle among offramp's modules (imports inside functions count too), the
CLI on top (nothing else imports it or argparse), and every function short enough to read at once."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "offramp"
MAX_FUNCTION_LINES = 80

#: Floors from the bottom (DESIGN.md, "Layout"): a module imports only from its own floor or below.
FLOORS: dict[str, int] = {
    "offramp": 0,
    **dict.fromkeys(["signals", "analysis", "io", "data", "checks", "progress", "weights"], 1),
    **dict.fromkeys(["backbones", "policies", "metrics", "resnet"], 2),
    **dict.fromkeys(["model", "cascade", "simulate", "quantize", "exported", "fused"], 3),
    **dict.fromkeys(["engine", "evaluate", "losses", "schemes", "risk"], 4),
    **dict.fromkeys(
        [
            "checkpoint",
            "train",
            "calibrate",
            "report",
            "compare",
            "plots",
            "render",
            "bench",
            "gradients",
            "serve",
            "export",
            "teacher",
            "train_images",
        ],
        5,
    ),
    "cli": 6,
}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Edges module -> offramp modules it imports, anywhere in the file (top level or in functions)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert found == [], f"import cycles (counting imports inside functions): {found}"


def test_the_cli_is_on_top() -> None:
    cli = f"{PACKAGE}.cli"
    for name, path in _modules().items():
        if name == cli or name.startswith(cli + "."):
            continue
        imported = import_graph()[name]
        assert not {m for m in imported if m == cli or m.startswith(cli + ".")}, f"{name} imports the CLI"
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert "argparse" not in names, f"{name} imports argparse (command-line code belongs in cli/)"


def test_the_checker_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_functions_are_short() -> None:
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert long == [], f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def floor_of(module: str) -> int:
    """The floor of ``offramp.X[.Y]`` from its first component (a package shares its floor)."""
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else parts[0]
    assert key in FLOORS, f"{module}: give it a floor in FLOORS (and in DESIGN.md's layout)"
    return FLOORS[key]


def test_modules_import_only_from_their_floor_or_below() -> None:
    upward = [
        f"{name} (floor {floor_of(name)}) imports {dep} (floor {floor_of(dep)})"
        for name, deps in import_graph().items()
        for dep in sorted(deps)
        if floor_of(dep) > floor_of(name)
    ]
    assert upward == [], f"imports that go up a floor: {upward}"
