"""The package rules the docstrings state, checked on the source: who may import what.

Each package's __init__ states its rule (a line starting "Rule:"); the tests below check the
parts of those rules an import can break. They read the files (ast), so they import nothing."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "web", "workers")
DATA_PACKAGES = {Path("shared/guards/data"), Path("workers/toolserver/data")}


def modules(under: str) -> list[Path]:
    return sorted(p.relative_to(ROOT) for p in (ROOT / under).rglob("*.py") if "__pycache__" not in p.parts)


def imported(path: Path) -> set[str]:
    """Every absolute module name the file imports, at any depth (lazy imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offenders(under: str, forbidden: tuple[str, ...], *, skip: str | None = None) -> list[str]:
    """`file: module` for each import under `under` of a module in (or below) `forbidden`."""
    return [f"{path}: {name}" for path in modules(under) if not (skip and path.is_relative_to(skip))
            for name in sorted(imported(path)) if any(name == f or name.startswith(f + ".") for f in forbidden)]


def test_every_package_states_its_rule():
    packages = [p.parent for under in PACKAGES for p in modules(under) if p.name == "__init__.py"]
    silent = [str(p) for p in packages
              if p not in DATA_PACKAGES and "\nRule: " not in "\n" + (ast.get_docstring(ast.parse((ROOT / p / "__init__.py").read_text())) or "")]
    assert silent == []


def test_web_and_workers_never_import_each_other():
    assert offenders("web", ("workers",)) == []
    assert offenders("workers", ("web",)) == []


def test_shared_has_no_views_no_tasks_and_launches_nothing_outside_cli():
    assert offenders("shared", ("web", "workers", "flask", "gunicorn")) == []
    assert offenders("shared", ("subprocess", "mirakuru"), skip="shared/cli") == []
    tasks = [str(p) for p in modules("shared") if any(
        isinstance(d, (ast.Attribute, ast.Name)) and getattr(d, "attr", getattr(d, "id", "")) in {"task", "shared_task"}
        for node in ast.walk(ast.parse((ROOT / p).read_text())) if isinstance(node, ast.FunctionDef)
        for d in (deco.func if isinstance(deco, ast.Call) else deco for deco in node.decorator_list))]
    assert tasks == []


@pytest.mark.parametrize("under", PACKAGES)
def test_no_running_process_imports_the_cli(under):
    assert offenders(under, ("shared.cli",), skip="shared/cli") == []


def test_the_guards_know_only_redis_and_a_verifier():
    assert offenders("shared/guards", ("flask", "celery", "kombu", "mcp", "web", "workers")) == []


def test_reasoners_touch_no_tool_no_redis_no_celery():
    assert offenders("workers/reasoners", ("redis", "celery", "mcp", "shared.redis_stores", "workers.mcp",
                                           "workers.tasks", "workers.steps")) == []


def test_the_tool_server_imports_no_celery_no_redis_and_nothing_of_a_turn():
    assert offenders("workers/toolserver", ("celery", "redis", "shared.redis_stores", "shared.turns",
                                            "shared.progress", "workers.tasks", "workers.steps",
                                            "workers.mcp.client")) == []
