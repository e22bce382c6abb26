"""Imports run one way: adapters -> core -> db, the kernel under all, tests under nothing.

Every ``.py`` file of the product is read as source (nothing is imported), and each import
statement, at module level or inside a function, is checked against the rules of the layer
its file belongs to. tests/test_contract.py checks the same boundaries from the other side:
what importing the web tier or the worker actually loads.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

TENSORFLOW = ("tensorflow", "tf_keras", "keras")
DEV_TOOLING = ("devtools", "bench", "docs")


@dataclass(frozen=True)
class Rule:
    """Files under ``layer`` never import ``forbidden`` (or, with ``lazy_only``, only inside a
    function, where the import runs when a command needs it)."""

    layer: str
    forbidden: tuple[str, ...]
    why: str
    lazy_only: bool = False


RULES = [
    Rule(
        "core",
        ("api", "worker", "dicomnet", "cli", "devtools", "models", "flask", *TENSORFLOW),
        "the application layer serves every adapter and never loads TensorFlow",
    ),
    Rule(
        "api",
        ("worker", "models", "dicomnet", "cli", *TENSORFLOW),
        "the web tier enqueues work by task name and never loads the model",
    ),
    Rule("worker", ("api", "dicomnet", "cli"), "an adapter imports no other adapter"),
    Rule("dicomnet", ("api", "worker", "cli"), "an adapter imports no other adapter"),
    Rule(
        "db",
        ("api", "worker", "core", "dicomnet", "cli", "flask", *TENSORFLOW),
        "storage sits under the application layer",
    ),
    Rule(
        "covidscan",
        ("db", "core", "api", "worker", "dicomnet", "cli", "models"),
        "the kernel (settings, contract, image errors, DICOM pixels) sits under every layer",
    ),
    *(
        Rule(layer, DEV_TOOLING, "dev tooling is not in the service images")
        for layer in ("api", "core", "covidscan", "db", "dicomnet", "models", "worker")
    ),
    Rule(
        "models",
        ("db", "core", "api", "worker", "flask", "sqlalchemy", "celery"),
        "the model code needs no database, web framework or queue",
    ),
    Rule(
        "cli",
        ("api", "worker", "models"),
        "a command loads the web tier, the worker or TensorFlow only when it runs",
        lazy_only=True,
    ),
]
PRODUCT = ("api", "cli", "core", "covidscan", "db", "devtools", "dicomnet", "models", "worker")


@dataclass(frozen=True)
class Import:
    module: str
    line: int
    in_function: bool


def imports_of(source: str, module: str) -> list[Import]:
    """Every import in ``source`` (the text of ``module``), relative ones made absolute."""
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    package = module.split(".")[: -child.level]
                    base = ".".join(package + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                found.append(Import(base, child.lineno, in_function))
            # A function body, and an ``if TYPE_CHECKING:`` block (read by type checkers
            # only), import nothing when the module is loaded.
            nested = (
                in_function
                or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                or (isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING"))
            )
            visit(child, nested)

    visit(ast.parse(source), False)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(*top: str) -> list[Path]:
    """The ``.py`` files under the given top-level folders (the whole checkout when none is
    named, less the virtualenv, the run data in var/ and hidden folders)."""
    if not top:
        skipped = {"var", "build", "node_modules"}
        top = tuple(
            entry.name
            for entry in ROOT.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in skipped
        )
        loose = list(ROOT.glob("*.py"))
    else:
        loose = []
    return sorted(loose + [path for name in top for path in (ROOT / name).rglob("*.py")])


def is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(rule: Rule) -> list[str]:
    found = []
    for path in sources(rule.layer):
        for imp in imports_of(path.read_text(), module_name(path)):
            if rule.lazy_only and imp.in_function:
                continue
            for forbidden in rule.forbidden:
                if is_within(imp.module, forbidden):
                    where = " at module level" if rule.lazy_only else ""
                    found.append(f"{path.relative_to(ROOT)}:{imp.line} imports {imp.module}{where}")
    return found


@pytest.mark.parametrize("rule", RULES, ids=[f"{r.layer}-{r.forbidden[0]}" for r in RULES])
def test_each_layer_imports_only_downward(rule):
    found = violations(rule)
    banned = ", ".join(rule.forbidden)
    assert not found, f"{rule.layer}/ must not import {banned} ({rule.why}):\n" + "\n".join(found)


def test_nothing_outside_the_tests_imports_them():
    found = [
        f"{path.relative_to(ROOT)}:{imp.line} imports {imp.module}"
        for path in sources()
        if path.relative_to(ROOT).parts[0] != "tests"
        for imp in imports_of(path.read_text(), module_name(path))
        if is_within(imp.module, "tests")
    ]
    shared = "move what is shared into the product or devtools/"
    assert not found, f"only tests/ may import tests ({shared}):\n" + "\n".join(found)


def test_every_product_package_has_rules_or_is_dev_tooling():
    """A new top-level package gets a rule here (devtools, the development stack, has none)."""
    ruled = {rule.layer for rule in RULES} | {"devtools"}
    assert set(PRODUCT) == ruled
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages <= set(PRODUCT), f"packages without import rules: {packages - set(PRODUCT)}"


def test_the_check_sees_function_level_relative_and_from_imports():
    source = (
        "import os, worker.tasks\n"
        "from .jobs import submit\n"
        "from . import scans\n"
        "def handler():\n"
        "    from api.problems import Problem\n"
        "    class Inner:\n"
        "        import tensorflow\n"
        "if True:\n"
        "    import flask\n"
    )
    found = {(i.module, i.line, i.in_function) for i in imports_of(source, "core.intake")}
    assert found == {
        ("os", 1, False),
        ("worker.tasks", 1, False),
        ("core.jobs", 2, False),
        ("core", 3, False),
        ("api.problems", 5, True),
        ("tensorflow", 7, True),
        ("flask", 9, False),
    }
    assert is_within("models.gradcam", "models") and not is_within("db.models", "models")
    assert not is_within("modelsx", "models")
