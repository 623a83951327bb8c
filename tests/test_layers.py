"""The package's layers, checked by path: each subpackage imports only the layers below it, and nothing
imports the composition modules at the top (methods, bench, workflow, targets, tasks, the CLI ...)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Modules every layer may use: errors, file writing, provenance, option parsing, the bench record.
FOUNDATION = {"clover2.errors", "clover2.atomic", "clover2.provenance", "clover2.options", "clover2.records"}
# Each layer and what it may import besides itself and the foundation.
LAYERS = {
    "clover2.engine": set(),
    "clover2.heads": {"clover2.engine"},
    "baselines": {"clover2.engine", "clover2.heads"},
    "clover2.training": {"clover2.engine", "clover2.heads"},
    "clover2.planning": {"clover2.engine", "clover2.heads"},
    "clover2.reporting": {"clover2.engine", "clover2.heads", "clover2.planning"},  # it checks the planner's predictions
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every clover2 or baselines module `path` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] in ("clover2", "baselines")}


def _layer(module: str) -> str | None:
    return next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), None)


def _files(layer: str) -> list[Path]:
    return sorted((ROOT / layer.replace(".", "/")).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it(layer):
    allowed = {layer, *LAYERS[layer]}
    for path in _files(layer):
        wrong = {name for name in _imports(path) if name not in FOUNDATION and _layer(name) not in allowed}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_the_foundation_imports_only_itself():
    for module in FOUNDATION:
        path = ROOT / (module.replace(".", "/") + ".py")
        assert _imports(path) <= FOUNDATION, f"{module} imports {sorted(_imports(path) - FOUNDATION)}"


def test_the_kernels_import_nothing_but_themselves_and_errors():
    for path in _files("clover2.engine.kernels"):
        above = {m for m in _imports(path) if not m.startswith("clover2.engine.kernels") and m != "clover2.errors"}
        assert not above, f"{path.name} reaches up into {sorted(above)}"


def test_every_module_is_at_the_top_or_in_a_layer():
    for path in (ROOT / "clover2").rglob("*.py"):
        module = _module(path)
        top = path.parent == ROOT / "clover2" or module.startswith("clover2.cli")
        assert top or _layer(module), f"{module} is in no layer"
