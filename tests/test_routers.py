"""Built-in routers: each filter (account, prefix, country, number type, sender) takes only its
messages; priority lists, weighted sharing, quality-driven sharing; down connectors last; the
chain's first plan wins under the account's allowed channels; no route is None."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from gateway.model import Message
from routing.breaker import BreakerOptions, Breakers
from routing.core import Attempt, RoutePlan, RoutingContext
from routing.quality import QualityOptions, QualityTracker
from routing.routers import (
    PLAN_CACHE,
    ChannelPolicy,
    FilteredRouter,
    MessageFilter,
    PolicyChain,
    QualityRouter,
    StaticRouter,
    Target,
    WeightedRouter,
    region_of,
    up_first,
)


def message(dest: str = "33612345678", account: str = "acme", sender: str = "ACME",
            number_type: str = "", country: str = "") -> Message:
    return Message(id="m1", account=account, source_addr=sender, source_ton=5, source_npi=0,
                   dest_addr=dest, dest_ton=1, dest_npi=1, data_coding=0, esm_class=0,
                   protocol_id=0, priority=0, registered_delivery=1, body=b"hi",
                   created_at=0.0, expires_at=86400.0, not_before=0.0,
                   number_type=number_type, country=country)


CTX = RoutingContext(0.0)


def connectors(plan: RoutePlan | None) -> list[str] | None:
    return None if plan is None else [a.connector for a in plan.attempts]


SMS_A = Target("sms", "opA")
SMS_B = Target("sms", "opB")


# --- filters: one row per rule -------------------------------------------------------------


@dataclass
class FilterCase:
    rule: str
    match: MessageFilter
    taken: list[Message] = field(default_factory=list)
    left: list[Message] = field(default_factory=list)


FILTER_CASES = [
    FilterCase("an account filter takes only the accounts it names",
               MessageFilter(accounts=frozenset({"acme"})),
               [message(account="acme")], [message(account="other")]),
    FilterCase("a prefix filter takes destinations starting with a prefix, +/00 or not",
               MessageFilter(prefixes=("336", "+337")),
               [message("33612345678"), message("+33712345678"), message("0033612345678")],
               [message("33123456789"), message("4433612345")]),
    FilterCase("a country filter takes the destination's phonenumbers region",
               MessageFilter(countries=frozenset({"FR"})),
               [message("33612345678"), message("+33123456789")],
               [message("34612345678"), message("12125551234")]),
    FilterCase("a country filter prefers the country a rule recorded",
               MessageFilter(countries=frozenset({"GP"})),
               [message("33612345678", country="GP")], [message("590690123456", country="FR")]),
    FilterCase("a country filter tells apart regions sharing a calling code",
               MessageFilter(countries=frozenset({"CA"})),
               [message("14165550123")], [message("12125551234")]),
    FilterCase("a number type filter takes the type the rules recorded, and no untyped one",
               MessageFilter(number_types=frozenset({"fixed_line"})),
               [message(number_type="fixed_line")],
               [message(number_type="mobile"), message(number_type="")]),
    FilterCase("a sender filter takes the senders it names, numbers with or without +",
               MessageFilter(senders=frozenset({"ACME", "+33612000000"})),
               [message(sender="ACME"), message(sender="33612000000")],
               [message(sender="acme"), message(sender="OTHER")]),
    FilterCase("every criterion given must match",
               MessageFilter(accounts=frozenset({"acme"}), prefixes=("33",)),
               [message("33612345678", account="acme")],
               [message("34612345678", account="acme"), message("336", account="x")]),
    FilterCase("an empty filter takes every message", MessageFilter(),
               [message(), message("1"), message(account="x", sender="Y")], []),
]


@pytest.mark.parametrize("case", FILTER_CASES, ids=[c.rule for c in FILTER_CASES])
def test_filter_rule(case: FilterCase) -> None:
    router = StaticRouter("r", [SMS_A], case.match)
    for msg in case.taken:
        assert connectors(router.plan(msg, CTX)) == ["opA"], msg.dest_addr
    for msg in case.left:
        assert router.plan(msg, CTX) is None, msg.dest_addr


def test_region_of_unknown_destinations_is_empty() -> None:
    assert region_of("ACME") == "" and region_of("") == "" and region_of("999123") == ""
    assert region_of("+33612345678") == "FR"


@pytest.mark.parametrize(("match", "error"), [
    (dict(countries=frozenset({"fr"})), "countries"),
    (dict(countries=frozenset({"XX"})), "countries"),
    (dict(prefixes=("33a",)), "prefixes"),
])
def test_bad_filters_are_refused(match: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        MessageFilter(**match)  # type: ignore[arg-type]


# --- plans --------------------------------------------------------------------------------


def test_a_priority_list_orders_by_priority_then_as_listed() -> None:
    router = StaticRouter("p", [Target("sms", "opC", priority=2), Target("sms", "opA"),
                                Target("sms", "opB", priority=1), Target("sms", "opD")])
    plan = router.plan(message(), CTX)
    assert connectors(plan) == ["opA", "opD", "opB", "opC"]
    assert plan is not None and plan.route == "p"
    assert router.plan(message(), CTX) is plan  # built once, not per message


def test_attempts_carry_their_channel_and_the_channel_timeout() -> None:
    router = StaticRouter("omni", [Target("rcs", "rbm"), Target("sms", "opA"),
                                   Target("tts", "voice")], timeouts={"rcs": 30.0, "tts": 60.0})
    plan = router.plan(message(), CTX)
    assert plan is not None and plan.attempts == (
        Attempt("rcs", "rbm", 30.0), Attempt("sms", "opA", None), Attempt("tts", "voice", 60.0))


def test_down_connectors_go_last_not_dropped() -> None:
    router = StaticRouter("p", [SMS_A, SMS_B, Target("sms", "opC")])
    ctx = RoutingContext(0.0, lambda name: name != "opA")
    assert connectors(router.plan(message(), ctx)) == ["opB", "opC", "opA"]


def test_when_all_connectors_are_down_the_order_stays() -> None:
    router = StaticRouter("p", [SMS_A, SMS_B])
    assert connectors(router.plan(message(), RoutingContext(0.0, lambda _n: False))) == [
        "opA", "opB"]
    attempts = (Attempt("sms", "opA"), Attempt("sms", "opB"))
    assert up_first(attempts, lambda _n: True) is attempts


def test_weighted_sharing_follows_the_weights_among_equal_priorities() -> None:
    router = WeightedRouter("w", [Target("sms", "opA", weight=3.0),
                                  Target("sms", "opB", weight=1.0),
                                  Target("sms", "opC", priority=1)], rng=random.Random(5))
    firsts: Counter[str] = Counter()
    for _ in range(4000):
        order = connectors(router.plan(message(), CTX))
        assert order is not None and order[2] == "opC" and set(order[:2]) == {"opA", "opB"}
        firsts[order[0]] += 1
    assert firsts["opA"] / 4000 == pytest.approx(0.75, abs=0.03)


def test_weighted_sharing_with_a_seed_is_repeatable() -> None:
    def run(seed: int) -> list[list[str] | None]:
        router = WeightedRouter("w", [SMS_A, SMS_B, Target("sms", "opC")],
                                rng=random.Random(seed))
        return [connectors(router.plan(message(), CTX)) for _ in range(50)]

    assert run(9) == run(9) and run(9) != run(10)


def test_a_zero_weight_target_goes_after_the_others_of_its_priority() -> None:
    router = WeightedRouter("w", [Target("sms", "opA", weight=0.0), SMS_B, Target("sms", "opC")],
                            rng=random.Random(1))
    assert all(connectors(router.plan(message(), CTX))[-1] == "opA"  # type: ignore[index]
               for _ in range(200))


def test_weights_all_zero_in_a_priority_are_refused() -> None:
    with pytest.raises(ValueError, match="weight > 0"):
        WeightedRouter("w", [Target("sms", "opA", weight=0.0)])
    with pytest.raises(ValueError, match="weight"):
        Target("sms", "opA", weight=-1.0)


def test_quality_router_moves_traffic_from_a_degraded_connector_and_back() -> None:
    tracker = QualityTracker(QualityOptions(window=100.0, floor=0.05, prior=0.0))
    router = QualityRouter("q", [SMS_A, SMS_B], tracker, rng=random.Random(3))

    def share_of_a(now: float) -> float:
        ctx = RoutingContext(now)
        firsts = [connectors(router.plan(message(), ctx))[0]  # type: ignore[index]
                  for _ in range(2000)]
        return firsts.count("opA") / 2000

    assert share_of_a(0.0) == pytest.approx(0.5, abs=0.04)  # no receipts: equal
    for _ in range(100):
        tracker.observe("opA", "33600000000", False, None, 1.0)
        tracker.observe("opB", "33600000000", True, 2.0, 1.0)
    assert share_of_a(1.0) == pytest.approx(0.05 / 1.05, abs=0.02)  # the floor share
    assert tracker.score("opA", "34600000000", 1.0) == 1.0  # other destinations unaffected
    for _ in range(100):  # it recovered; the bad receipts leave the window
        tracker.observe("opA", "33600000000", True, 2.0, 150.0)
    assert share_of_a(150.0) == pytest.approx(0.5, abs=0.04)


def test_a_filtered_router_asks_its_router_only_for_matching_messages() -> None:
    inner = StaticRouter("inner", [SMS_A])
    router = FilteredRouter(inner, MessageFilter(accounts=frozenset({"acme"})))
    assert connectors(router.plan(message(account="acme"), CTX)) == ["opA"]
    assert router.plan(message(account="other"), CTX) is None


def test_router_construction_refuses_bad_targets_and_timeouts() -> None:
    with pytest.raises(ValueError, match="channel"):
        Target("fax", "opA")
    with pytest.raises(ValueError, match="listed twice"):
        StaticRouter("r", [SMS_A, SMS_A])
    with pytest.raises(ValueError, match="at least one target"):
        StaticRouter("r", [])
    with pytest.raises(ValueError, match="timeouts"):
        StaticRouter("r", [SMS_A], timeouts={"fax": 1.0})
    with pytest.raises(ValueError, match="timeouts"):
        StaticRouter("r", [SMS_A], timeouts={"sms": 0.0})


# --- the chain and the account policy ------------------------------------------------------

OPEN_A = Breakers(["opA", "opB"], BreakerOptions(failures=1, cooldown=3600.0))
OPEN_A["opA"].failure(0.0)
OMNI = StaticRouter("omni", [Target("rcs", "rbm"), Target("tts", "voice"), SMS_A])
FR = StaticRouter("fr", [SMS_B], MessageFilter(prefixes=("33",)))
DEFAULT = StaticRouter("default", [SMS_A])


@dataclass
class ChainCase:
    rule: str
    chain: PolicyChain
    msg: Message
    plan: list[tuple[str, str]] | None
    route: str = ""


CHAIN_CASES = [
    ChainCase("the first router with a plan wins", PolicyChain([FR, DEFAULT]),
              message("33612345678"), [("sms", "opB")], "fr"),
    ChainCase("a router without opinion passes to the next", PolicyChain([FR, DEFAULT]),
              message("34612345678"), [("sms", "opA")], "default"),
    ChainCase("no router with a plan: no route", PolicyChain([FR]),
              message("34612345678"), None),
    ChainCase("without a policy every channel is allowed", PolicyChain([OMNI]),
              message(), [("rcs", "rbm"), ("tts", "voice"), ("sms", "opA")], "omni"),
    ChainCase("the account's policy keeps only its channels",
              PolicyChain([OMNI], {"acme": ChannelPolicy(frozenset({"rcs", "sms"}))}),
              message(), [("rcs", "rbm"), ("sms", "opA")], "omni"),
    ChainCase("voice only for an account that allows it",
              PolicyChain([OMNI], {"acme": ChannelPolicy(frozenset({"sms"}), voice=True)}),
              message(), [("tts", "voice"), ("sms", "opA")], "omni"),
    ChainCase("accounts without a policy get the default",
              PolicyChain([OMNI], {}, default=ChannelPolicy()),
              message(), [("sms", "opA")], "omni"),
    ChainCase("a plan left empty by the policy passes to the next router",
              PolicyChain([StaticRouter("rcs", [Target("rcs", "rbm")]), DEFAULT],
                          default=ChannelPolicy()),
              message(), [("sms", "opA")], "default"),
    ChainCase("nothing the account may use: no route",
              PolicyChain([StaticRouter("rcs", [Target("rcs", "rbm")])],
                          default=ChannelPolicy()),
              message(), None),
    ChainCase("connectors whose breaker is open go last",
              PolicyChain([StaticRouter("p", [SMS_A, SMS_B])], breakers=OPEN_A),
              message(), [("sms", "opB"), ("sms", "opA")], "p"),
]


@pytest.mark.parametrize("case", CHAIN_CASES, ids=[c.rule for c in CHAIN_CASES])
def test_chain_rule(case: ChainCase) -> None:
    plan = case.chain.plan(case.msg, CTX)
    if case.plan is None:
        assert plan is None
    else:
        assert plan is not None
        assert [(a.channel, a.connector) for a in plan.attempts] == case.plan
        assert plan.route == case.route


def test_the_chain_passes_the_routers_plan_through_when_nothing_changes() -> None:
    plan = DEFAULT.plan(message(), CTX)
    assert PolicyChain([DEFAULT], default=ChannelPolicy()).plan(message(), CTX) is plan


def test_a_router_that_raises_is_skipped_and_told_when_asked() -> None:
    class Broken:
        def plan(self, message: Message, context: RoutingContext) -> RoutePlan | None:
            raise RuntimeError("boom")

    broken = Broken()
    told: list[str] = []
    chain = PolicyChain([broken, DEFAULT], on_error=lambda r, e: told.append(str(e)))
    assert connectors(chain.plan(message(), CTX)) == ["opA"] and told == ["boom"]
    with pytest.raises(RuntimeError):
        PolicyChain([broken, DEFAULT]).plan(message(), CTX)


def test_a_policy_naming_tts_as_a_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="voice = true"):
        ChannelPolicy(frozenset({"tts"}))


def test_a_plan_trying_rcs_first_waits_the_accounts_wait_then_sms_under_the_agents_sender(
        ) -> None:
    omni = StaticRouter("omni", [Target("rcs", "rbm"), SMS_A, SMS_B])
    chain = PolicyChain([omni], {"omni": ChannelPolicy(frozenset({"rcs", "sms"}),
                                                       rcs_wait=30.0)},
                        rcs_senders={"rbm": "ACME"})
    plan = chain.plan(message(account="omni", sender="SHOP"), CTX)
    assert plan is not None
    assert [(a.channel, a.connector, a.timeout, a.sender) for a in plan.attempts] == [
        ("rcs", "rbm", 30.0, ""), ("sms", "opA", None, "ACME"), ("sms", "opB", None, "ACME")]


def test_an_rcs_attempt_with_nothing_after_it_gets_no_wait_and_a_router_timeout_stays(
        ) -> None:
    policy = {"omni": ChannelPolicy(frozenset({"rcs", "sms"}), rcs_wait=30.0)}
    alone = PolicyChain([StaticRouter("r", [Target("rcs", "rbm")])], policy)
    plan = alone.plan(message(account="omni"), CTX)
    assert plan is not None and plan.attempts[0].timeout is None
    timed = PolicyChain([StaticRouter("r", [Target("rcs", "rbm"), SMS_A],
                                      timeouts={"rcs": 5.0})], policy)
    plan = timed.plan(message(account="omni"), CTX)
    assert plan is not None and plan.attempts[0].timeout == 5.0
    assert plan.attempts[1].sender == ""  # no sender mapped to this agent: the message's own


def test_the_same_router_plan_goes_under_each_accounts_own_policy_every_time() -> None:
    # the chain remembers a plan as each policy lets it go: one account's must never leak
    chain = PolicyChain([OMNI], {"a": ChannelPolicy(frozenset({"rcs", "sms"})),
                                 "b": ChannelPolicy(frozenset({"sms"}), voice=True)},
                        default=ChannelPolicy())
    expected = {"a": ["rbm", "opA"], "b": ["voice", "opA"], "c": ["opA"]}
    for account in ["a", "b", "c", "b", "a", "c", "a"]:
        assert connectors(chain.plan(message(account=account), CTX)) == expected[account]


def test_a_remembered_plan_still_puts_the_connectors_down_now_last() -> None:
    chain = PolicyChain([StaticRouter("p", [SMS_A, SMS_B])], default=ChannelPolicy())
    down: set[str] = set()
    ctx = RoutingContext(0.0, lambda name: name not in down)
    for now_down, order in [(set(), ["opA", "opB"]), ({"opA"}, ["opB", "opA"]),
                            (set(), ["opA", "opB"]), ({"opB"}, ["opA", "opB"])]:
        down.clear()
        down.update(now_down)
        assert connectors(chain.plan(message(), ctx)) == order


def test_a_single_attempt_plan_still_asks_a_breaker_that_is_not_closed() -> None:
    # asking an open breaker whose cool-down is over makes it half-open (and says so)
    changes: list[str] = []
    breakers = Breakers(["opA"], BreakerOptions(failures=1, cooldown=10.0),
                        on_change=lambda name, old, new, now: changes.append(new.value))
    breakers["opA"].failure(0.0)
    chain = PolicyChain([DEFAULT], breakers=breakers)
    assert connectors(chain.plan(message(), RoutingContext(20.0))) == ["opA"]
    assert changes == ["open", "half_open"]


def test_plans_drawn_per_message_keep_the_chains_memory_bounded() -> None:
    router = WeightedRouter("w", [SMS_A, SMS_B], rng=random.Random(7))
    chain = PolicyChain([router], default=ChannelPolicy())
    seen = Counter()
    for _ in range(2 * PLAN_CACHE + 10):
        plan = chain.plan(message(), CTX)
        assert plan is not None and sorted(connectors(plan) or []) == ["opA", "opB"]
        seen[plan.attempts[0].connector] += 1
        assert len(chain._plans) <= PLAN_CACHE
    assert seen["opA"] > PLAN_CACHE // 2 and seen["opB"] > PLAN_CACHE // 2
