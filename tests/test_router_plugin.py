"""User routers: a router from a separate installed package (a dist-info with an entry point of
group smsgw.routers) routes a message, as does one named by dotted path; a missing module,
class or entry point, or a class that is not a Router, is a clear error."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.model import Message
from routing.core import Attempt, RoutingContext
from routing.registry import ENTRY_POINT_GROUP, RouterLoadError, load_router, resolve
from routing.routers import PolicyChain, StaticRouter, Target

PACKAGE = "acme_routers"

PLUGIN_SOURCE = textwrap.dedent('''
    """A third party's routers: even destinations to one connector, odd ones to another."""
    from routing.core import Attempt, RoutePlan


    class ParityRouter:
        def __init__(self, options):
            self.even = options["even"]
            self.odd = options.get("odd", self.even)

        def plan(self, message, context):
            last = message.dest_addr[-1:]
            if not last.isdigit():
                return None
            connector = self.even if int(last) % 2 == 0 else self.odd
            return RoutePlan((Attempt("sms", connector),), "parity")


    class NotARouter:
        def __init__(self, options):
            pass


    def make_router(options):
        return ParityRouter(options)
''')


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Package acme_routers with its dist-info (entry points "parity" and "broken") in its own
    directory on sys.path, as `pip install` of a third-party package would leave it."""
    site = tmp_path / "site"
    (site / PACKAGE).mkdir(parents=True)
    (site / PACKAGE / "__init__.py").write_text(PLUGIN_SOURCE)
    info = site / f"{PACKAGE}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nparity = {PACKAGE}:ParityRouter\n"
        f"broken = {PACKAGE}_missing:Router\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop(PACKAGE, None)


def message(dest: str) -> Message:
    return Message(id="m1", account="acme", source_addr="ACME", source_ton=5, source_npi=0,
                   dest_addr=dest, dest_ton=1, dest_npi=1, data_coding=0, esm_class=0,
                   protocol_id=0, priority=0, registered_delivery=1, body=b"hi",
                   created_at=0.0, expires_at=86400.0, not_before=0.0)


CTX = RoutingContext(0.0)


def test_a_router_from_an_installed_entry_point_routes_messages(installed: Path) -> None:
    router = load_router("parity", {"even": "opA", "odd": "opB"})
    chain = PolicyChain([router, StaticRouter("default", [Target("sms", "opC")])])
    plan = chain.plan(message("33612345678"), CTX)
    assert plan is not None and plan.attempts == (Attempt("sms", "opA"),)
    assert plan.route == "parity"
    odd = chain.plan(message("33612345677"), CTX)
    assert odd is not None and odd.attempts == (Attempt("sms", "opB"),)
    fallback = chain.plan(message("ACME"), CTX)  # the plug-in has no opinion: next router
    assert fallback is not None and fallback.route == "default"


def test_a_router_by_dotted_path_routes_messages(installed: Path) -> None:
    router = load_router(f"{PACKAGE}:ParityRouter", {"even": "opB"})
    plan = router.plan(message("33612345671"), CTX)
    assert plan is not None and plan.attempts == (Attempt("sms", "opB"),)


@pytest.mark.parametrize(("spec", "error"), [
    ("no_such_package_xyz:Router", "no module named 'no_such_package_xyz'"),
    (f"{PACKAGE}:Missing", f"module '{PACKAGE}' has no 'Missing'"),
    (f"{PACKAGE}:NotARouter", "is not a Router (it has no plan(message, context) method)"),
    (f"{PACKAGE}:make_router", "is a function, not a class"),
    ("nonesuch", f"no entry point of that name in group {ENTRY_POINT_GROUP} (broken, parity)"),
    ("broken", "entry point 'broken' of group smsgw.routers"),
    (":Router", "is not a dotted path"),
])
def test_a_router_that_cannot_be_loaded_is_a_clear_error(installed: Path, spec: str,
                                                         error: str) -> None:
    with pytest.raises(RouterLoadError) as info:
        resolve(spec)
    assert error in str(info.value)


def test_a_router_refusing_its_options_is_a_clear_error(installed: Path) -> None:
    with pytest.raises(RouterLoadError, match="refused its options: KeyError: 'even'"):
        load_router("parity", {})
