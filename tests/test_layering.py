"""The layers of the code: the core never reaches up.

rbexport/ (the export logic) imports neither Prefect nor the flows, tasks, deployments or
the command-line app; tasks/ and flows/ never import the app; the app's modules import
each other without a cycle. Read from the source, so a lazy import inside a function
counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def imports_of(path: Path) -> set[str]:
    """The top-level package (or, for the app, the module) of every import in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            package = ".".join(path.relative_to(PROJECT).with_suffix("").parts[: -node.level])
            found.add(f"{package}.{node.module}" if node.module else package)
    return found


def files(package: str) -> list[Path]:
    return sorted((PROJECT / package).rglob("*.py"))


def test_the_core_never_imports_prefect_or_what_sits_above_it():
    for path in files("rbexport"):
        above = {
            name
            for name in imports_of(path)
            if name.split(".")[0] in {"prefect", "prefect_dask", "flows", "tasks", "deployments", "app"}
        }
        assert not above, f"{path.relative_to(PROJECT)} imports {sorted(above)}"


def test_flows_and_tasks_never_import_the_app():
    for path in files("flows") + files("tasks"):
        app = {name for name in imports_of(path) if name.split(".")[0] == "app"}
        assert not app, f"{path.relative_to(PROJECT)} imports {sorted(app)}"


def test_the_app_has_no_import_cycle():
    graph = {
        f"app.{path.stem}": {name for name in imports_of(path) if name.startswith("app.")}
        for path in files("app")
        if path.stem != "__init__"
    }

    def visit(module: str, trail: tuple[str, ...]) -> None:
        assert module not in trail, "import cycle: " + " -> ".join((*trail, module))
        for imported in sorted(graph.get(module, ())):
            visit(imported, (*trail, module))

    for module in graph:
        visit(module, ())
