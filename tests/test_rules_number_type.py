"""The recipient's number type and country, recorded by the rules for routing: kept on the
message (store, GET /v1/messages/{id}, `smsgw message show`), and routes that take some number
types only ([[route]] number_types): a fixed-line number goes another way, or is REJECTED
naming its type when no route takes it."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from gateway.config import HttpConfig, RouteConfig, load_config
from gateway.dispatcher import NO_ROUTE_ERROR
from gateway.model import State
from routing.core import PrefixRoute, PrefixRouter, RoutingContext
from rules.core import Context, Pipeline
from rules.recipient import RecipientRule
from rules.settings import parse_rules
from tests.openapi_check import check_response
from tests.stack import running_stack, wait_for
from tests.test_admin import smsgw
from tests.test_config import MINIMAL, error_of, write
from tests.test_rules_recipient import T0, message

DEMO = {"Authorization": "Bearer demo-token"}


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short directory: a Unix socket path holds at most 107 octets."""
    with tempfile.TemporaryDirectory(prefix="smsgw-nt-") as d:
        yield Path(d)


@pytest.mark.parametrize(("dest", "kind", "country"), [
    ("0612345678", "mobile", "FR"), ("0112345678", "fixed_line", "FR"),
    ("+41791234567", "mobile", "CH"),
])
def test_the_pipeline_records_the_number_type_and_country_on_the_message(
        dest: str, kind: str, country: str) -> None:
    msg = message(dest, 0)
    Pipeline([("recipient", RecipientRule({}))]).run(
        msg, Context(T0, "demo", settings={"region": "FR"}))
    assert (msg.number_type, msg.country) == (kind, country)


def router() -> PrefixRouter:
    return PrefixRouter([
        PrefixRoute("fr", ("33",), ("orange",)),
        PrefixRoute("fr-mobile", ("33",), ("sfr",), number_types=frozenset({"mobile"})),
        PrefixRoute("fr-6", ("336",), ("bouygues",), number_types=frozenset({"fixed_line"})),
        PrefixRoute("rest", (), ("intl",), number_types=frozenset({"mobile"})),
    ])


@pytest.mark.parametrize(("dest", "kind", "route"), [
    ("33612345678", "mobile", "fr-mobile"),  # the longer prefix 336 does not take mobiles
    ("33112345678", "fixed_line", "fr"),  # no route names fixed_line for 33: the unfiltered
    ("33612345678", "fixed_line", "fr-6"),  # (not a true type of it: routing reads the field)
    ("33612345678", "", "fr"),  # no type recorded: only routes that name none take it
    ("41791234567", "mobile", "rest"),
    ("41441234567", "fixed_line", None),  # the default takes mobiles only
])
def test_routes_take_the_number_types_they_name_longest_prefix_first(
        dest: str, kind: str, route: str | None) -> None:
    msg = message(dest, 1)
    msg.number_type = kind
    plan = router().plan(msg, RoutingContext(T0))
    assert (plan.route if plan is not None else None) == route


def test_route_number_types_are_checked_in_the_config(tmp_path: Path) -> None:
    base = MINIMAL + '[[route]]\nname = "fr"\nprefixes = ["33"]\nsmscs = ["opA"]\n'
    mobile = '[[route]]\nname = "fr-m"\nprefixes = ["33"]\nsmscs = ["opA"]\n'
    config = load_config(write(tmp_path, base + mobile + 'number_types = ["mobile"]\n'))
    assert config.routes[-1] == RouteConfig("fr-m", ("33",), ("opA",), ("mobile",))
    msg = error_of(tmp_path, base + mobile + 'number_types = ["mobiles"]\n')
    assert 'route "fr-m".number_types[0]: expected one of "fixed_line", "mobile"' in msg
    assert 'got "mobiles"' in msg
    twice = mobile + 'number_types = ["mobile", "voip"]\n' + mobile.replace(
        '"fr-m"', '"fr-m2"') + 'number_types = ["voip"]\n'
    msg = error_of(tmp_path, base + twice)
    assert ('route "fr-m2".prefixes: prefix "33" is already routed by route "fr-m" for voip '
            "(a prefix belongs to one route per number type)") in msg


def mobiles_only() -> tuple[RouteConfig, ...]:
    return (RouteConfig("mobiles", (), ("sim",), ("mobile", "fixed_line_or_mobile")),)


async def test_a_fixed_line_number_no_route_takes_is_rejected_naming_its_type(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = parse_rules({"pipeline": ["recipient"], "region": "FR"}, ["demo", "other"])
    with capture_logs():
        async with running_stack(state_dir, http=HttpConfig(port=0), rules=rules,
                                 routes=mobiles_only()) as (gw, sim), \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}",
                                  timeout=10) as client:
            ids = []
            for to in ("0612345678", "0112345678"):
                resp = await client.post("/v1/messages", headers=DEMO,
                                         json={"to": to, "from": "ACME", "text": "Hi"})
                assert resp.status_code == 202
                ids.append(resp.json()["messages"][0]["id"])
            mobile_id, fixed_id = ids
            await wait_for(lambda: not {mobile_id, fixed_id} & set(gw.dispatcher.live))
            assert [r.destination_addr for r in sim.submitted] == ["33612345678"]
            view = check_response(await client.get(f"/v1/messages/{fixed_id}", headers=DEMO),
                                  "/v1/messages/{message_id}")
            assert (view["state"], view["error"]) == (State.REJECTED.value, NO_ROUTE_ERROR)
            assert (view["number_type"], view["country"]) == ("fixed_line", "FR")
            [final] = [h for h in view["history"] if h["kind"] == "final"]
            assert final["detail"]["reason"] == ("no route for its destination (a fixed_line "
                                                 "number)")
            view = check_response(await client.get(f"/v1/messages/{mobile_id}", headers=DEMO),
                                  "/v1/messages/{message_id}")
            assert (view["number_type"], view["country"]) == ("mobile", "FR")
            stored = await gw.store.get_message(fixed_id)
            assert stored is not None and stored.number_type == "fixed_line"
            sock = str(gw.config.admin_socket)
            status, out, _ = await smsgw(capsys, "message", "show", fixed_id, "--socket", sock)
            assert status == 0
            lines = dict(line.split(None, 1) for line in out.splitlines()[:25]
                         if line.strip() and len(line.split(None, 1)) == 2)
            assert (lines["number_type"], lines["country"]) == ("fixed_line", "FR")
