"""The house rules, read from the code: one import root, which package may import which, and the wheel."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "cli", "models", "serving", "state", "worker")  # folders at the top, each xling.<name>
# Which of our packages each package may import (besides itself).
ALLOWED = {
    "models": set(),
    "state": {"models"},
    "worker": {"state", "models"},
    "serving": {"state", "models"},
    "app": {"serving", "state", "models"},
    "cli": {"app", "serving", "worker", "state", "models"},
}
HTTP_LIBRARIES = ("fastapi", "starlette")
# The HTTP layer of the api: the only modules that import FastAPI or Starlette.
HTTP_MODULES = {"xling.app.main", "xling.app.deps", "xling.app.errors", "xling.app.middleware", "xling.app.openapi"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["xling", *parts])


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def package_of(module: str) -> str:
    return module.split(".")[1]


def test_packages_import_only_what_the_layout_allows() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if package_of(target) != package_of(module) and package_of(target) not in ALLOWED[package_of(module)]
    ]
    assert not wrong, wrong


def test_no_import_circles() -> None:
    graph = import_graph()
    # Tarjan's strongly connected components; any component of two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for node in graph:
        if node not in index:
            visit(node)
    assert not circles, circles


def test_only_the_http_layer_imports_fastapi_and_the_ml_core_no_services() -> None:
    http = sorted(
        name
        for name, path in our_modules().items()
        if any(m.split(".")[0] in HTTP_LIBRARIES for m in imports_of(path))
    )
    assert set(http) <= HTTP_MODULES | {n for n in http if n.startswith("xling.app.routes")}, http
    services = ("fastapi", "starlette", "celery", "redis")
    core = [
        f"{name} imports {m}"
        for name, path in our_modules().items()
        if name.startswith("xling.models")
        for m in imports_of(path)
        if m.split(".")[0] in services
    ]
    assert not core, core


# The tier factories (the api's and the worker's): the only modules, besides the Qdrant modules themselves, that may
# import one; everything else asks the tier it was given.
TIER_FACTORIES = {"xling.serving.tiers", "xling.worker.build_tiers"}


def test_only_the_tier_factories_import_qdrant() -> None:
    modules = our_modules()
    qdrant = {name for name in modules if name.split(".")[-1].startswith("qdrant")}
    wrong = sorted(
        f"{name} imports {m}"
        for name, path in modules.items()
        if name not in qdrant | TIER_FACTORIES
        for m in imports_of(path)
        if m in qdrant or m.split(".")[0] == "qdrant_client"
    )
    assert qdrant and not wrong, wrong
    # The HTTP layer names no tier and no index: of models/index it knows the search modes' names alone.
    app = [f"{name} imports {m}" for name, path in modules.items() if name.startswith("xling.app")
           for m in imports_of(path) if m.startswith(("xling.serving.tiers", "xling.worker", "xling.models.index"))
           and not m.startswith("xling.models.index.fusion")]
    assert not app, app


def models_folder(module: str) -> str | None:
    """The folder of models/ a module sits in (xling.models.training, ...); None for models/'s own files."""
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[1] == "models" and len(parts) > 3 else None


def test_no_two_way_between_folders_of_the_ml_core() -> None:
    edges: dict[tuple[str, str], str] = {}
    for module, targets in import_graph().items():
        for target in targets:
            pair = (models_folder(module), models_folder(target))
            if pair[0] and pair[1] and pair[0] != pair[1]:
                edges.setdefault((pair[0], pair[1]), f"{module} -> {target}")
    two_way = [(edges[(a, b)], edges[(b, a)]) for a, b in edges if a < b and (b, a) in edges]
    assert not two_way, two_way


# What a job needs and an api process must not load: the training stack, our worker code.
TRAINING_STACK = ("sentence_transformers", "accelerate", "datasets", "xling.worker",
                  "xling.models.training.trainer", "xling.models.training.loss", "xling.models.experiment")


def test_the_api_process_loads_no_training_stack() -> None:
    """The api validates job requests against the contract (models/training/config.py), never the trainer."""
    probe = ("import sys, xling.app.main; "
             f"print('\\n'.join(m for m in sys.modules if m.startswith({TRAINING_STACK!r})))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert not loaded, loaded


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from the tracked tree (copied, so the build leaves nothing in the checkout)."""
    work = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (work / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            (work / "src" / name).write_bytes(source.read_bytes())
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work / "out"), "."],
        cwd=work / "src", check=True, capture_output=True,
    )
    (built,) = (work / "out").glob("*.whl")
    return built


def test_the_wheel_installs_one_top_level_name_with_every_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert archive.read(top_level).decode().split() == ["xling"]
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"xling"}
    packages = {str(p.parent.relative_to(ROOT)) for d in PACKAGES for p in (ROOT / d).rglob("__init__.py")}
    missing = [p for p in packages if f"xling/{p}/__init__.py" not in names]
    assert not missing, f"folders left out of the wheel (pyproject.toml lists packages): {missing}"
    assert "xling/app/static/index.html" in names
