"""The shape of the package: the layer contract (import-linter), task and domain decided by their specs only, and
no imports hidden inside functions (which is how import cycles hide)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(PROJECT / "geocnn").rglob("*.py"), *(PROJECT / "pipelines").rglob("*.py")])
TASKS = {"classification", "regression", "vote_fractions", "vote_counts"}
DOMAINS = {"galaxy", "earth"}
FORMATS = {"kaggle", "zoobot", "folders", "csv", "synthetic", "survey", "synthetic_earth"}


def rel(path: Path) -> str:
    return path.relative_to(PROJECT).as_posix()


def test_the_layer_contract_holds() -> None:
    """cli -> pipelines -> serving -> domains -> tracking -> outputs|training -> inference -> models -> evaluation
    -> data -> config; only tracking/ imports MLflow; Prefect stays in pipelines/ and serving/; no cycles."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(PROJECT / "pyproject.toml")], cwd=PROJECT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "4 kept, 0 broken" in proc.stdout


def string_comparisons(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, constant) of every ==, !=, in, not in comparison against a string constant (or a tuple of them)."""
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for op, right in zip(node.ops, node.comparators):
            if not isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)):
                continue
            items = right.elts if isinstance(right, (ast.Tuple, ast.List, ast.Set)) else [right]
            if isinstance(node.left, ast.Constant):
                items = [*items, node.left]
            out += [(node.lineno, i.value) for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]
    return out


def test_tasks_and_domains_are_decided_by_their_specs_not_by_string_comparisons() -> None:
    allowed = {"task": ("geocnn/models/tasks.py", "geocnn/config/"),
               "domain": ("geocnn/config/", "geocnn/inference/bundle.py"),  # bundle: reading format-1 'kind'
               "format": ("geocnn/config/", "geocnn/domains/galaxy.py", "geocnn/domains/earth.py",
                          "geocnn/data/sources/galaxy_tables.py", "geocnn/outputs/tables.py")}  # tables: file suffix
    found = []
    for path in SOURCES:
        for line, value in string_comparisons(ast.parse(path.read_text())):
            kind = "task" if value in TASKS else "domain" if value in DOMAINS else "format" if value in FORMATS else None
            if kind and not rel(path).startswith(allowed[kind]):
                found.append(f"{rel(path)}:{line} compares with {kind} {value!r}")
    assert not found, "\n".join(found)


OPTIONAL_EXTRAS = ("astropy", "prefect_dask", "prefect_ray", "torchgeo")
"""Packages of optional extras (fits, scale, torchgeo), imported where they are needed so that geocnn runs without
them."""


def test_imports_are_at_module_level_except_the_clis_lazy_ones() -> None:
    """Function-local imports hid an import cycle before; the CLI may defer imports (fast --help), and an optional
    extra (astropy for FITS) is imported where it is needed."""
    found = []
    for path in SOURCES:
        if rel(path) == "geocnn/cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        names = [a.name for a in inner.names]
                        module = getattr(inner, "module", None) or names[0]
                        if not module.startswith(OPTIONAL_EXTRAS):
                            found.append(f"{rel(path)}:{inner.lineno} imports {module} inside {node.name}()")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", SOURCES, ids=rel)
def test_every_module_opens_with_a_one_line_docstring(path: Path) -> None:
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc, f"{rel(path)} has no module docstring"
    assert len(doc.splitlines()[0]) <= 120
