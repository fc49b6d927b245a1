"""The package layering the README promises: arrows point one way.

Read from the source with ``ast`` (no imports run), so a stray ``from ..recovery import x`` inside a
function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "condensa"

#: subpackage (or top-level module) -> the condensa packages/modules it must never import
FORBIDDEN = {
    "search": {"operators", "recovery", "metrics", "coupling", "surgery", "export", "models", "data", "pipeline",
               "commands", "analysis", "report", "config", "runs", "distributed", "parallel_eval"},
    # the glue a parallel search ships to its Ray tasks: a workspace, never the CLI or run folders
    "parallel_eval": {"commands", "cli", "runs", "report", "analysis", "export", "surgery", "coupling"},
    "metrics": {"recovery", "search", "export", "analysis", "pipeline", "commands", "report", "runs"},
    "operators": {"recovery", "search", "metrics", "export", "surgery", "pipeline", "commands", "analysis", "report"},
    "coupling": {"operators", "surgery", "export", "recovery", "search", "metrics", "pipeline", "commands"},
    "surgery": {"export", "recovery", "search", "metrics", "pipeline", "commands", "analysis", "report"},
    "recovery": {"search", "metrics", "export", "analysis", "pipeline", "commands", "report", "surgery"},
    "export": {"search", "recovery", "pipeline", "commands", "analysis", "report", "runs"},
    "packing": {"recovery", "search", "metrics", "export", "surgery", "pipeline", "commands", "analysis", "report", "runs"},
    "report": {"recovery", "operators", "metrics", "export", "pipeline", "commands", "analysis"},
}


def imported_packages(path: Path, source: str | None = None) -> set[str]:
    """First component below ``condensa`` of every condensa module that ``path`` imports."""
    module_parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if module_parts[-1] == "__init__":
        module_parts = module_parts[:-1]
    package_parts = module_parts if path.name == "__init__.py" else module_parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [alias.name] for alias in node.names] if not node.module else [target]
            else:
                names = [(node.module or "").split(".")]
            for parts in names:
                if parts and parts[0] == "condensa" and len(parts) > 1 and not parts[1].startswith("__"):
                    found.add(parts[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "condensa" and len(parts) > 1:
                    found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_one_way(package):
    offenders = []
    module = PACKAGE / f"{package}.py"
    for path in [module] if module.is_file() else sorted((PACKAGE / package).rglob("*.py")):
        bad = imported_packages(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_the_checker_sees_relative_and_function_level_imports():
    source = "def f():\n    from ..recovery import train\n    from . import bo\n    import condensa.metrics\n"
    assert imported_packages(PACKAGE / "search" / "probe.py", source) == {"recovery", "search", "metrics"}
    assert imported_packages(PACKAGE / "search" / "__init__.py", "from ..io import x\nfrom . import api\n") == {"io", "search"}


def import_graph() -> dict[str, set[str]]:
    """``{subpackage or top-level module: condensa parts it imports}``."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        node = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if node == "__init__":
            continue
        graph.setdefault(node, set()).update(imported_packages(path) - {node})
    return graph


if __name__ == "__main__":  # python tests/test_architecture.py: print the import graph
    for node, targets in import_graph().items():
        print(f"{node:12s} -> {', '.join(sorted(targets)) or '-'}")
