"""dvc.yaml lists every project module a stage runs, so a change there re-runs the stage.

For each stage, the module its ``cmd`` runs (``python -m pipelines.<stage>``, plus the worker the
deepspeed launcher starts, named by the stage module's ``WORKER``) is followed through its imports of project modules
(top-level and function-level, read with ``ast``; nothing is imported). Every project file reached
must be a dep of the stage, every code dep must exist, and a code dep the stage never imports is
stale (it re-runs the stage for nothing).
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

PROJECT_PACKAGES = ("pipelines", "serving", "monitoring")
STAGES: dict = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def module_file(module: str) -> Path | None:
    """``pipelines.data.splitting`` → its source file in the repo (module or package), None if not a project module."""
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path, module: str) -> set[str]:
    """Every module named by an import anywhere in ``path`` (``from a.b import c``: ``a.b`` and ``a.b.c``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"), filename=str(path))]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):  # never executed: not a runtime dependency
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from ..a import b
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # kept only if it is a module
        stack.extend(ast.iter_child_nodes(node))
    return found


def _with_parents(module: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` and ``a/b/c``."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _runs_code(path: Path) -> bool:
    """A package ``__init__.py`` that is only a docstring changes nothing a stage computes."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def project_files(entry_modules: list[str]) -> set[str]:
    """Repo-relative files of every project module the entry modules import, transitively."""
    seen: set[str] = set()
    files: set[str] = set()
    todo = [m for e in entry_modules for m in _with_parents(e)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module)
        if path is None:
            continue
        if path.name != "__init__.py" or _runs_code(path):
            files.add(path.relative_to(ROOT).as_posix())
        for name in imported_modules(path, module):
            todo.extend(m for m in _with_parents(name) if module_file(m) is not None)
    return files


def entry_modules(stage: str) -> list[str]:
    """The modules a stage's ``cmd`` runs: ``python -m X``, and the worker the DeepSpeed launcher starts
    on every rank when the stage launches one (its module-level ``WORKER``)."""
    argv = shlex.split(STAGES[stage]["cmd"])
    assert argv[:2] == ["python", "-m"], f"{stage}: cmd is not `python -m <module>`: {STAGES[stage]['cmd']}"
    modules = [argv[2]]
    tree = ast.parse(module_file(argv[2]).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "WORKER" for t in node.targets):
            modules.append(ast.literal_eval(node.value))
    return modules


def deps(stage: str) -> list[str]:
    return [next(iter(d)) if isinstance(d, dict) else str(d) for d in STAGES[stage].get("deps", [])]


def code_deps(stage: str) -> list[str]:
    return [d for d in deps(stage) if d.split("/")[0] in PROJECT_PACKAGES]


def covers(dep: str, file: str) -> bool:
    """A dep is a file, or a folder that covers the files under it."""
    return file == dep or file.startswith(dep.rstrip("/") + "/")


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_project_module_a_stage_imports_is_a_dep(stage: str) -> None:
    imported = project_files(entry_modules(stage))
    assert imported, f"{stage}: found no project module for its cmd"
    missing = sorted(f for f in imported if not any(covers(d, f) for d in deps(stage)))
    assert not missing, f"dvc.yaml stage '{stage}' runs these project files but does not list them in deps: {missing}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_code_dep_exists_and_is_used(stage: str) -> None:
    absent = [d for d in code_deps(stage) if not (ROOT / d).exists()]
    assert not absent, f"dvc.yaml stage '{stage}' lists deps that do not exist: {absent}"
    imported = project_files(entry_modules(stage))
    unused = [d for d in code_deps(stage) if not any(covers(d, f) for f in imported)]
    assert not unused, (
        f"dvc.yaml stage '{stage}' lists code it never imports (a change there re-runs it for nothing): {unused}"
    )


def test_the_walker_follows_function_level_and_submodule_imports() -> None:
    """``from pipelines.registry import tracking`` inside a function reaches ``pipelines/registry/tracking.py``."""
    files = project_files(["pipelines.register"])
    assert {"pipelines/register.py", "pipelines/registry/tracking.py", "pipelines/errors.py"} <= files
    assert "pipelines/registry/__init__.py" not in files or _runs_code(ROOT / "pipelines/registry/__init__.py")
