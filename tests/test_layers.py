"""Layering, read from the source with ast (imports inside functions and under TYPE_CHECKING too).

Issue 10: "Routing depends on the message model only, never on the daemon": a module of
routing/ imports no gateway module but gateway.model. smpp/ is the protocol package both use:
it imports nothing from gateway/ or routing/.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

Forbidden = Callable[[str], bool]  # an imported module's dotted name -> not allowed here


def _routing_forbids(name: str) -> bool:
    return name.split(".")[0] == "gateway" and not (
        name == "gateway.model" or name.startswith("gateway.model."))


def _smpp_forbids(name: str) -> bool:
    return name.split(".")[0] in ("gateway", "routing")


LAYERS: dict[str, tuple[Forbidden, str]] = {
    "routing": (_routing_forbids, "routing/ may import gateway.model only, of gateway/"),
    "smpp": (_smpp_forbids, "smpp/ imports nothing from gateway/ or routing/"),
}


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module a `from ... import` reads from, its relative dots resolved in `package`."""
    if node.level == 0:
        return node.module or ""
    parts = package.split(".")
    base = parts[:max(0, len(parts) - (node.level - 1))]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported(tree: ast.AST, package: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything `tree` imports, wherever the statement is. A name
    taken from a module counts as that module's submodule (``from gateway import metrics``
    -> gateway.metrics, ``from gateway.model import Message`` -> gateway.model.Message);
    importlib.import_module / __import__ of a literal string count too."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            for alias in node.names:
                if alias.name == "*":
                    yield node.lineno, base
                else:
                    yield node.lineno, f"{base}.{alias.name}" if base else alias.name
        elif isinstance(node, ast.Call) and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else \
                func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value


def violations(source: str, where: str, package: str, forbidden: Forbidden) -> list[str]:
    """"file:line: imports X" for each forbidden import in `source`."""
    tree = ast.parse(source, filename=where)
    return [f"{where}:{line}: imports {name}"
            for line, name in sorted(imported(tree, package)) if forbidden(name)]


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layer_imports_nothing_above_it(layer: str) -> None:
    forbidden, rule = LAYERS[layer]
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"no module found under {layer}/"
    found: list[str] = []
    for path in files:
        relative = path.relative_to(ROOT)
        package = ".".join(relative.parent.parts)
        found += violations(path.read_text(encoding="utf-8"), str(relative), package, forbidden)
    assert not found, f"{rule}:\n" + "\n".join(found)


def test_the_check_sees_every_kind_of_import() -> None:
    """The rule above holds only if the checker finds imports however they are written."""
    source = '''
from typing import TYPE_CHECKING
import importlib
import gateway.model
from gateway.model import Message
from gateway import model
from gateway import metrics, model as m2
import gateway.config as cfg
from . import core
from .. import gateway as gw
if TYPE_CHECKING:
    from gateway.daemon import Daemon
def late() -> None:
    import gateway
    from gateway.store import Store
    importlib.import_module("gateway.tls")
'''
    assert violations(source, "routing/x.py", "routing", _routing_forbids) == [
        "routing/x.py:7: imports gateway.metrics",
        "routing/x.py:8: imports gateway.config",
        "routing/x.py:10: imports gateway",
        "routing/x.py:12: imports gateway.daemon.Daemon",
        "routing/x.py:14: imports gateway",
        "routing/x.py:15: imports gateway.store.Store",
        "routing/x.py:16: imports gateway.tls",
    ]
    assert violations(source, "smpp/x.py", "smpp", _smpp_forbids)[:3] == [
        "smpp/x.py:4: imports gateway.model",
        "smpp/x.py:5: imports gateway.model.Message",
        "smpp/x.py:6: imports gateway.model",
    ]
    assert violations("from routing.core import Router\nfrom . import pdu\n",
                      "smpp/x.py", "smpp", _smpp_forbids) == [
        "smpp/x.py:1: imports routing.core.Router"]
