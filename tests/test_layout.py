"""The package's layering, read from the source with ast: no import cycle, no import of a top-level file, and
imports only downwards (files/runtime < core < models, data < evaluation < stages)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "hypermorph_spatially_adaptive"
#: The repository's top-level files (thin fronts, not installed); the package must never import them.
TOP_LEVEL = {path.stem for path in ROOT.glob("*.py")} | {"benchmarks", "tests"}
#: Layer of each sub-package (and ground-floor module); a module may import its own layer and lower ones.
LAYERS = {"files": 0, "runtime": 0, "core": 1, "models": 2, "data": 2, "evaluation": 3, "stages": 4}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(package modules imported by ``name``, absolute non-package imports) from every import statement."""
    is_package = path.name == "__init__.py"
    internal, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            # ``from pkg import module`` imports that module; ``from module import name`` the module itself.
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem for alias in node.names]
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                while target not in modules:  # ``import pkg.module.name`` style: the longest module prefix
                    target = target.rsplit(".", 1)[0]
                internal.add(target)
            else:
                external.add(target.split(".")[0])
    return internal, external


@pytest.fixture(scope="module")
def graph() -> dict[str, tuple[set[str], set[str]]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_no_module_of_the_package_imports_a_top_level_file(graph):
    offenders = {name: sorted(external & TOP_LEVEL) for name, (_, external) in graph.items() if external & TOP_LEVEL}
    assert not offenders, f"package modules import top-level files: {offenders}"


def test_the_package_has_no_import_cycle(graph):
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module][0]):
            if target == module:
                continue
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_imports_go_down_the_layers(graph):
    upward = []
    for module, (internal, _) in graph.items():
        layer = _layer(module)
        if layer is None:
            continue  # the package's own __init__: the public front, above every layer
        for target in internal:
            if target == PACKAGE:
                upward.append(f"{module} imports the package front {PACKAGE}")
            elif _layer(target) > layer:
                upward.append(f"{module} (layer {layer}) imports {target} (layer {_layer(target)})")
    assert not upward, "\n".join(sorted(upward))


def _sub_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_models_and_data_do_not_import_each_other(graph):
    crossing = [f"{module} imports {target}" for module, (internal, _) in graph.items() for target in internal
                if {_sub_package(module), _sub_package(target)} == {"models", "data"}]
    assert not crossing, crossing


def test_every_module_declares_its_public_names():
    missing = [name for name, path in _modules().items() if "__all__" not in path.read_text()]
    assert not missing, f"modules without __all__: {missing}"


def test_the_graph_sees_relative_and_absolute_imports(graph):
    # A guard for the parser above: known edges of each import style must be found.
    assert f"{PACKAGE}.core.tensors" in graph[f"{PACKAGE}.core.losses"][0]  # from .tensors import ...
    assert f"{PACKAGE}.core.regularizers" in graph[f"{PACKAGE}.core.objective"][0]  # from . import regularizers
    assert f"{PACKAGE}.files" in graph[f"{PACKAGE}.models.checkpoints"][0]  # from ..files import ...
