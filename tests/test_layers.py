"""The import layers of ``src/crossdistill`` (docs/architecture.md): every module may import only
its own layer and the layers below it, module-level imports form no cycle, and crossdistill is
imported inside a function only by the command line (which loads its commands lazily)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Bottom to top. A module belongs to the layer of the longest prefix that names it.
LAYERS: list[tuple[str, ...]] = [
    ("crossdistill._util", "crossdistill._version", "crossdistill.errors"),
    ("crossdistill.registry", "crossdistill.config"),
    ("crossdistill.core", "crossdistill.losses"),
    ("crossdistill.data", "crossdistill.models", "crossdistill.store"),
    ("crossdistill.evaluate",),
    ("crossdistill.train",),
    ("crossdistill.build",),
    ("crossdistill.runs",),
    (
        "crossdistill.pipeline",
        "crossdistill.record",
        "crossdistill.api",
        "crossdistill.generations",
        "crossdistill.continual",
    ),
    (
        "crossdistill.suites",
        "crossdistill.export",
        "crossdistill.report",
        "crossdistill.domains",
        "crossdistill.tune",
    ),
    ("crossdistill.cli", "crossdistill.__main__", "crossdistill"),
]
# crossdistill imported inside a function, outside the command line: none today; each one added
# must say why in a comment on its line (an optional heavy dependency, say).
MAX_INNER_IMPORTS = 5


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "crossdistill").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def layer_of(module: str) -> int:
    best, found = -1, None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), i
    if found is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return found


def _imports(module: str) -> list[tuple[str, int, bool, str]]:
    """``(imported module, line, inside a function, source line)`` of every crossdistill
    import in ``module``; ``from a import b`` counts as importing ``a.b`` when that is a
    module."""
    path = MODULES[module]
    lines = path.read_text().splitlines()
    found: list[tuple[str, int, bool, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names: list[str] = []
            if isinstance(child, ast.ImportFrom) and (child.module or "").startswith(
                "crossdistill"
            ):
                for alias in child.names:
                    sub = f"{child.module}.{alias.name}"
                    names.append(sub if sub in MODULES else child.module)  # type: ignore[arg-type]
            elif isinstance(child, ast.Import):
                names = [a.name for a in child.names if a.name.startswith("crossdistill")]
            found.extend((n, child.lineno, in_function, lines[child.lineno - 1]) for n in names)
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def upward(module: str, imports: list[tuple[str, int, bool, str]]) -> list[str]:
    mine = layer_of(module)
    return [
        f"line {line}: {target} (layer {layer_of(target)} > {mine})"
        for target, line, inner, _ in imports
        if not inner and layer_of(target) > mine
    ]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target in graph and not state.get(target):
                found = walk(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            found = walk(node)
            if found:
                return found
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module: str) -> None:
    found = upward(module, _imports(module))
    assert not found, f"{module} imports from a layer above its own: {found}"


def test_no_module_level_import_cycle() -> None:
    graph = {m: {t for t, _, inner, _ in _imports(m) if not inner} for m in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_crossdistill_is_imported_inside_functions_only_by_the_cli() -> None:
    inner = [
        (module, line, text)
        for module in MODULES
        if not module.startswith("crossdistill.cli")
        for _, line, in_function, text in _imports(module)
        if in_function
    ]
    assert len(inner) <= MAX_INNER_IMPORTS, inner
    unexplained = [(m, line) for m, line, text in inner if "#" not in text]
    assert not unexplained, f"say why in a comment on the import line: {unexplained}"


def test_the_core_never_imports_a_domain() -> None:
    core = [m for m in MODULES if layer_of(m) < layer_of("crossdistill.domains")]
    for module in core:
        domains = [t for t, _, _, _ in _imports(module) if t.startswith("crossdistill.domains")]
        assert not domains, f"{module} imports {domains}"


def test_the_checks_catch_what_they_look_for() -> None:
    """Not vacuous: the import walk finds real imports, an upward import and a cycle are
    caught, a function-level import is told apart."""
    kd = _imports("crossdistill.losses.logit.kd")
    assert ("crossdistill.core.knowledge", False) in {(t, inner) for t, _, inner, _ in kd}
    assert upward("crossdistill.core.distiller", [("crossdistill.runs", 1, False, "")])
    assert not upward("crossdistill.core.distiller", [("crossdistill.runs", 1, True, "")])
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    cli = _imports("crossdistill.cli.run")
    assert any(inner for _, _, inner, _ in cli)  # the CLI loads the library lazily
