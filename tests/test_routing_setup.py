"""The daemon's routing from config: [[route]] alone routes as before; [[router]] groups are
asked in order with [[route]] last (or where the "routes" router stands); accounts' channels
filter plans; breakers, sender limits, backoff and quality trackers are built from config; a
plug-in router is made with its options; the running daemon routes through the chain."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway import daemon
from gateway.config import (
    AccountConfig,
    BreakerConfig,
    ConfigError,
    GatewayConfig,
    RetryConfig,
    RouteConfig,
    RouterConfig,
    SenderLimitConfig,
    SimulatorConfig,
    SmscConfig,
    StoreConfig,
    check,
)
from gateway.model import Message, State
from gateway.routing_setup import build_routing, carry_over
from gateway.simulator import SmscSimulator
from routing.backoff import Backoff
from routing.core import Attempt, RoutePlan, RoutingContext
from routing.routers import ChannelPolicy
from tests.stack import SmpplibEsme, gateway_config, wait_for
from tests.test_config import MINIMAL, write

HASH = "scrypt$16384$8$1$tZL1pV5J7HRHO1nCzJ0b1w==$9WcHfOtnUIe1vAec0Pi0Bl+WNEICT+QnFELF2Ukumgg="


def smsc(name: str, **changes: Any) -> SmscConfig:
    return dataclasses.replace(SmscConfig(name, "127.0.0.1", 2775, "gw", "pw"), **changes)


def config(**changes: Any) -> GatewayConfig:
    base = GatewayConfig(
        source=Path("/etc/smsgw/test.toml"),
        accounts={"acme": AccountConfig("acme", HASH),
                  "omni": AccountConfig("omni", HASH, channels=("rcs", "sms"), voice=True)},
        smscs={"opA": smsc("opA"), "opB": smsc("opB", breaker=BreakerConfig(1, 10.0, 1))},
        routes=(RouteConfig("fr", ("33",), ("opA", "opB")), RouteConfig("default", (), ("opB",))),
        store=StoreConfig(path=Path("/tmp/x.sqlite3")))
    return dataclasses.replace(base, **changes)


def message(dest: str = "33612345678", account: str = "acme", sender: str = "ACME") -> Message:
    return Message(id="m1", account=account, source_addr=sender, source_ton=5, source_npi=0,
                   dest_addr=dest, dest_ton=1, dest_npi=1, data_coding=0, esm_class=0,
                   protocol_id=0, priority=0, registered_delivery=1, body=b"hi",
                   created_at=0.0, expires_at=86400.0, not_before=0.0)


CTX = RoutingContext(0.0)


def route_of(plan: RoutePlan | None) -> tuple[str, list[str]] | None:
    return None if plan is None else (plan.route, [a.connector for a in plan.attempts])


def test_route_groups_alone_route_as_before() -> None:
    routing = build_routing(config())
    assert route_of(routing.router.plan(message("33612345678"), CTX)) == ("fr", ["opA", "opB"])
    assert route_of(routing.router.plan(message("44712345678"), CTX)) == ("default", ["opB"])
    no_default = build_routing(config(routes=(RouteConfig("fr", ("33",), ("opA",)),)))
    assert no_default.router.plan(message("44712345678"), CTX) is None  # no route


def test_routers_come_first_and_route_groups_last() -> None:
    routers = (RouterConfig("ACME-senders", "sender", senders=("ACME",),
                            channels=(("sms", "opB"),)),)
    routing = build_routing(config(routers=routers))
    assert route_of(routing.router.plan(message(), CTX)) == ("ACME-senders", ["opB"])
    assert route_of(routing.router.plan(message(sender="OTHER"), CTX)) == ("fr", ["opA", "opB"])


def test_a_routes_router_keeps_its_place_in_the_chain() -> None:
    routers = (RouterConfig("prefix-routes", "routes"),
               RouterConfig("all", "priority", channels=(("sms", "opA"),)))
    routing = build_routing(config(routers=routers))
    assert route_of(routing.router.plan(message("33612345678"), CTX)) == ("fr", ["opA", "opB"])
    only_fr = build_routing(config(routers=routers,
                                   routes=(RouteConfig("fr", ("33",), ("opB",)),)))
    assert route_of(only_fr.router.plan(message("44712345678"), CTX)) == ("all", ["opA"])


def test_router_options_reach_the_routers() -> None:
    routers = (RouterConfig("w", "weighted", channels=(("sms", "opA"), ("sms", "opB")),
                            weights={"opA": 1.0, "opB": 0.0}, timeouts={"sms": 20.0}, seed=1),)
    routing = build_routing(config(routers=routers))
    for _ in range(50):
        plan = routing.router.plan(message(), CTX)
        assert plan is not None and plan.attempts == (Attempt("sms", "opA", 20.0),
                                                      Attempt("sms", "opB", 20.0))


def test_accounts_channels_become_policies() -> None:
    routing = build_routing(config())
    assert routing.router.policies == {
        "acme": ChannelPolicy(frozenset({"sms"}), False, rcs_wait=60.0),
        "omni": ChannelPolicy(frozenset({"rcs", "sms"}), True, rcs_wait=60.0)}
    assert routing.router.default == ChannelPolicy()


def test_breakers_per_connector_move_an_open_connector_last() -> None:
    changes: list[tuple[str, str, str]] = []
    routing = build_routing(config(breaker=BreakerConfig(3, 30.0, 1),
                                   routes=(RouteConfig("d", (), ("opB", "opA")),)),
                            on_breaker_change=lambda n, o, w, _t: changes.append((n, o, w)))
    assert routing.breakers["opA"].options.failures == 3  # the [breaker] defaults
    assert routing.breakers["opB"].options.failures == 1  # its own
    routing.breakers["opB"].failure(5.0)
    assert changes == [("opB", "closed", "open")]
    assert route_of(routing.router.plan(message(), RoutingContext(6.0))) == ("d", ["opA", "opB"])
    assert route_of(routing.router.plan(message(), RoutingContext(15.0))) == ("d", ["opB", "opA"])


def test_sender_limits_backoff_and_quality_trackers_are_built() -> None:
    routers = (RouterConfig("q", "quality", channels=(("sms", "opA"), ("sms", "opB")),
                            floor=0.2, group_by="prefix:2"),)
    routing = build_routing(config(
        routers=routers, retry=RetryConfig(1.0, 8.0, 2.0, "full"),
        sender_limits=(SenderLimitConfig("ACME", 1.0, 1, "opA"),)))
    assert routing.backoff == Backoff(1.0, 8.0, 2.0, "full")
    assert routing.limiter.delay_for("opA", "ACME", 0.0) == 0.0
    assert routing.limiter.delay_for("opA", "ACME", 0.0) == pytest.approx(1.0)
    assert routing.limiter.delay_for("opB", "ACME", 0.0) == 0.0
    [tracker] = routing.trackers
    routing.observe("opA", "33612345678", False, None, 0.0)
    assert tracker.counts("opA", "33000", 0.0) == (0, 1)
    assert tracker.options.floor == 0.2 and tracker.options.group_by == "prefix:2"


def test_a_reload_keeps_what_the_routing_learnt_where_its_settings_did_not_change() -> None:
    """Rule: a reload does not close an open breaker, refill a sender's burst or forget a
    quality router's receipts, unless their own settings changed."""
    routers = (RouterConfig("q", "quality", channels=(("sms", "opA"), ("sms", "opB"))),)
    limits = (SenderLimitConfig("ACME", 1.0, 1, "opA"),)
    before = config(routers=routers, sender_limits=limits)
    running = build_routing(before)
    running.breakers["opB"].failure(5.0)  # opB's breaker trips at its first failure
    assert running.limiter.delay_for("opA", "ACME", 5.0) == 0.0  # its one token taken
    running.observe("opA", "33612345678", False, None, 5.0)
    # a reload changing only an account's channels
    after = dataclasses.replace(before, accounts={
        **before.accounts, "acme": AccountConfig("acme", HASH, channels=("sms", "rcs"))})
    routing = build_routing(after)
    carry_over(running, before, routing, after)
    assert routing.breakers.available("opB", 6.0) is False  # still open
    assert routing.limiter.delay_for("opA", "ACME", 5.0) > 0  # no new burst
    assert routing.trackers[0].counts("opA", "33612345678", 6.0) == (0, 1)
    # changed settings start afresh: opB's breaker options, the sender's rate
    changed = config(routers=routers, smscs={"opA": smsc("opA"), "opB": smsc(
        "opB", breaker=BreakerConfig(2, 10.0, 1))},
        sender_limits=(SenderLimitConfig("ACME", 2.0, 1, "opA"),))
    fresh = build_routing(changed)
    carry_over(running, before, fresh, changed)
    assert fresh.breakers.available("opB", 6.0) is True
    assert fresh.limiter.delay_for("opA", "ACME", 5.0) == 0.0


class EvenRouter:
    """A plug-in router for these tests: destinations ending in an even digit go to one
    connector."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.connector = str(options["connector"])

    def plan(self, message: Message, context: RoutingContext) -> RoutePlan | None:
        if message.dest_addr[-1:] in "02468":
            return RoutePlan((Attempt("sms", self.connector),), "even")
        return None


def test_a_plugin_router_is_made_with_its_options_and_filtered() -> None:
    routers = (RouterConfig("even", "plugin", accounts=("acme",),
                            plugin="tests.test_routing_setup:EvenRouter",
                            options={"connector": "opB"}),)
    routing = build_routing(config(routers=routers))
    assert route_of(routing.router.plan(message("33612345678"), CTX)) == ("even", ["opB"])
    assert route_of(routing.router.plan(message("33612345677"), CTX)) == ("fr", ["opA", "opB"])
    other_account = message("33612345678", account="omni")
    assert route_of(routing.router.plan(other_account, CTX)) == ("fr", ["opA", "opB"])


def test_a_plugin_refusing_its_options_is_a_config_error_naming_it(tmp_path: Path) -> None:
    text = MINIMAL + ('[[router]]\nname = "even"\ntype = "plugin"\n'
                      'plugin = "tests.test_routing_setup:EvenRouter"\noptions = {}\n')
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        check(path)
    assert str(info.value) == (f'{path}: router "even".options: router '
                               "'tests.test_routing_setup:EvenRouter' refused its options: "
                               "KeyError: 'connector'")
    assert info.value.key == 'router "even".options'


async def test_the_daemon_routes_through_the_router_chain(tmp_path: Path) -> None:
    """End to end over 127.0.0.1: a sender router sends ACME's messages through a second
    connection (simB) while [[route]] would have taken the first (sim)."""
    sim_config = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=7)
    async with trio.open_nursery() as nursery:
        simulator = SmscSimulator(sim_config, window=sim_config.window)
        await nursery.start(simulator.serve)
        assert simulator.port is not None
        sim_b = SmscConfig("simB", "127.0.0.1", simulator.port, "sim", "simpass",
                           reconnect_delay=0.05, reconnect_delay_max=0.5)
        routers = (RouterConfig("acme-via-b", "sender", senders=("ACME",),
                                channels=(("sms", "simB"),)),)
        cfg = gateway_config(tmp_path, simulator.port, extra_smscs=(sim_b,), routers=routers)
        stop = trio.Event()
        gw: daemon.Running = await nursery.start(functools.partial(daemon.run, cfg, stop.wait))
        assert gw.routing is not None and gw.dispatcher.router is gw.routing.router
        await wait_for(lambda: all(c.is_up() for c in gw.connectors.values()))
        esme = SmpplibEsme(gw.smpp_port)

        def submit() -> None:
            esme.bind()
            esme.submit("33612345678", b"via B")
            esme.read_until(lambda: bool(esme.resps))

        with trio.fail_after(20):
            await trio.to_thread.run_sync(submit)
        message_id = esme.resps[0].message_id.decode()
        with trio.fail_after(10):
            while (stored := await gw.store.get_message(message_id)) is None or \
                    stored.state in (State.ACCEPTED, State.QUEUED):
                await trio.sleep(0.01)
        # (the simulator may send the receipt over either connection: not checked here)
        assert stored is not None and stored.state in (State.IN_FLIGHT, State.DELIVERED)
        assert stored.connector == "simB" and stored.attempts == 1
        await trio.to_thread.run_sync(esme.close)
        stop.set()
        nursery.cancel_scope.cancel()


def test_the_example_config_builds() -> None:
    conf = Path(__file__).resolve().parent.parent / "conf"
    for name in ("gateway.example.toml", "demo.toml"):
        routing = build_routing(check(conf / name))
        assert routing.router.routers  # at least the [[route]] groups
