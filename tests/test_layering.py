"""The layers of the code: the core never reaches up.

One installed package, rbexport: its core (rbexport/ but rbexport/app) imports neither
Prefect nor the flows, tasks, deployments (rbexport.flows, .tasks, .deployments: the
repository's top-level folders, linked into the package) or the command-line app
(rbexport.app); tasks/ and flows/ never import the app; the app's modules import each
other without a cycle. Read from the source, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


LAYERS = {"flows", "tasks", "deployments", "app"}  # above the core, as rbexport.<layer>


def layer_of(name: str) -> str:
    """`rbexport.tasks.export` -> `tasks`; `rbexport.storage` -> `rbexport`; `prefect.flows` -> `prefect`."""
    parts = name.split(".")
    return parts[1] if parts[0] == "rbexport" and len(parts) > 1 and parts[1] in LAYERS else parts[0]


def imports_of(path: Path) -> set[str]:
    """The module of every import in a file."""
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
    """A folder's modules (rglob does not follow the package's links to the top-level folders)."""
    return sorted((PROJECT / package).rglob("*.py"))


def test_the_installed_package_is_rbexport_alone(tmp_path):
    """The wheel holds one top-level package, with the flows, tasks, deployments and app inside it."""
    import subprocess
    import sys
    import zipfile

    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path, PROJECT],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    [wheel] = tmp_path.glob("rbexport-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"rbexport"}, names
    for module in ("app/cli.py", "flows/export.py", "tasks/export.py", "deployments/serve.py", "storage/s3.py"):
        assert f"rbexport/{module}" in names
    entry_points = zipfile.ZipFile(wheel).read(next(name for name in names if name.endswith("entry_points.txt")))
    assert b"rbexport = rbexport.app.cli:entry" in entry_points


def test_the_core_never_imports_prefect_or_what_sits_above_it():
    core = [path for path in files("rbexport") if "app" not in path.relative_to(PROJECT / "rbexport").parts[:1]]
    assert core and not any(path.is_relative_to(PROJECT / "rbexport" / "app") for path in core)
    for path in core:
        above = {name for name in imports_of(path) if layer_of(name) in {"prefect", "prefect_dask", *LAYERS}}
        assert not above, f"{path.relative_to(PROJECT)} imports {sorted(above)}"


def test_flows_and_tasks_never_import_the_app():
    for path in files("flows") + files("tasks"):
        app = {name for name in imports_of(path) if layer_of(name) == "app"}
        assert not app, f"{path.relative_to(PROJECT)} imports {sorted(app)}"


def test_the_app_has_no_import_cycle():
    graph = {
        f"rbexport.app.{path.stem}": {name for name in imports_of(path) if name.startswith("rbexport.app.")}
        for path in files("rbexport/app")
        if path.stem != "__init__"
    }

    def visit(module: str, trail: tuple[str, ...]) -> None:
        assert module not in trail, "import cycle: " + " -> ".join((*trail, module))
        for imported in sorted(graph.get(module, ())):
            visit(imported, (*trail, module))

    for module in graph:
        visit(module, ())
