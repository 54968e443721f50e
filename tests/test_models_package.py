"""The models package has no import cycle: its modules' imports form a layered graph (checked from the source,
deferred imports inside functions included), the registry imports nothing else from the package, and every
module imports on its own in a fresh interpreter, and all of them in either order."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "colorize_core" / "models"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_within_package(module: str) -> set[str]:
    """The models modules ``module`` imports anywhere in its source ("__init__" for the package itself),
    except those only imported for type checking."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or node.module == "colorize_core.models" or \
                    (node.module or "").startswith("colorize_core.models."):
                base = node.module or "" if node.level == 1 else (node.module or "").removeprefix("colorize_core.models")
                base = base.lstrip(".")
                if base:
                    out.add(base.split(".")[0])
                else:  # from . import x: a submodule, or a name of the package itself
                    out.update(a.name if a.name in MODULES else "__init__" for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("colorize_core.models"):
                    rest = a.name.removeprefix("colorize_core.models").lstrip(".")
                    out.add(rest.split(".")[0] if rest else "__init__")
    out.discard(module)
    return out


def test_models_import_graph_is_acyclic_and_registry_is_at_the_bottom():
    graph = {m: imports_within_package(m) for m in MODULES}
    assert graph["registry"] == set(), graph["registry"]
    assert "__init__" not in set().union(*graph.values()), "a models module imports the package itself"
    for low in ("common", "preprocess", "weights", "checkpoint"):
        assert not graph[low] & {"registry", "zoo", "loading"}, (low, graph[low])
    done: set[str] = set()

    def visit(m: str, path: tuple[str, ...]) -> None:
        assert m not in path, f"import cycle: {' -> '.join((*path, m))}"
        if m in done:
            return
        for dep in graph[m]:
            visit(dep, (*path, m))
        done.add(m)

    for m in MODULES:
        visit(m, ())
    # The shared constants have one home; no architecture takes them from another architecture.
    for m in MODULES:
        assert "eccv16" not in graph[m] or m == "zoo", (m, graph[m])


def test_each_models_module_imports_alone_and_in_either_order():
    """One fresh interpreter (torch loaded once); before each import every colorize_core module is dropped
    from sys.modules, so each one starts as in a fresh interpreter of its own."""
    names = [f"colorize_core.models.{m}" for m in MODULES]
    script = f"""
import importlib, sys
import torch  # noqa: F401 - loaded once; only our modules are re-imported

def fresh():
    for name in [n for n in sys.modules if n == "colorize_core" or n.startswith("colorize_core.")]:
        del sys.modules[name]

names = {names!r}
for name in names:
    fresh()
    importlib.import_module(name)
for order in (names, names[::-1]):
    fresh()
    for name in order:
        importlib.import_module(name)
    from colorize_core.models import list_models
    assert "effnet_unet" in list_models() and "effnet_guided" in list_models(), list_models()
print("ok", len(names))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=PACKAGE.parents[1])
    assert res.returncode == 0 and res.stdout.split() == ["ok", str(len(names))], res.stderr[-3000:]
