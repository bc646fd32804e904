"""The package's layers: what may import what, read from the source (no import needed)."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "shared" / "fnbundle"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("layer", ["jobs", "training", "runtime", "tasks"])
def test_the_lower_layers_never_import_the_http_api(layer):
    # The job service, the trainers, the model runtime and the task plug-ins run in
    # workers and CLIs with no web app; the API imports them, never the reverse.
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            m
            for m in imported_modules(path)
            if m == "fnbundle.api" or m.startswith("fnbundle.api.")
        )
        for path in sorted((PACKAGE / layer).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
