"""The pluggable routing core: a Router turns a message into an ordered plan of attempts.

A plan lists (channel, connector) attempts, primary first then failover. Built-in routers are
chained from config; a user router is any class implementing the Router protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gateway.model import Message


@dataclass(frozen=True, slots=True)
class Attempt:
    """One way to try a message: a channel ("sms", "rcs", "tts") through a named connector."""

    channel: str
    connector: str
    timeout: float | None = None  # how long to wait for an outcome before the next attempt
    # The sender this attempt goes out under, when not the message's own (the SMS fallback of
    # an RCS agent goes out under the sender mapped to the agent); "" : the message's own.
    sender: str = ""


@dataclass(frozen=True, slots=True)
class RoutePlan:
    attempts: tuple[Attempt, ...]
    route: str = ""  # name of the route that produced the plan (for logs and metrics)


@dataclass(frozen=True, slots=True)
class RoutingContext:
    now: float
    is_up: Callable[[str], bool] = field(default=lambda _name: True)


@runtime_checkable
class Router(Protocol):
    """Plan how to send a message; None means "no opinion" (the next router in the chain)."""

    def plan(self, message: Message, context: RoutingContext) -> RoutePlan | None: ...


def sender_ton_npi(sender: str) -> tuple[int, int]:
    """The SMPP TON/NPI of a sender set by routing: an international number (1/1) when it
    is all digits (a leading '+' allowed) and longer than a short code, a short code (3/0)
    when shorter, else alphanumeric (5/0)."""
    digits = sender[1:] if sender.startswith("+") else sender
    if digits.isdigit():
        return (1, 1) if len(digits) > 6 else (3, 0)
    return 5, 0


def normalise_digits(address: str) -> str:
    """Destination digits as used for prefix matching: no '+', no international '00'."""
    addr = address.strip()
    if addr.startswith("+"):
        return addr[1:]
    if addr.startswith("00"):
        return addr[2:]
    return addr


@dataclass(frozen=True, slots=True)
class PrefixRoute:
    name: str
    prefixes: tuple[str, ...]  # empty: default route
    connectors: tuple[str, ...]
    channel: str = "sms"
    # The recipient's number types it takes (Message.number_type, recorded by the rules'
    # recipient rule: "mobile", "fixed_line", ...); empty: any, including none recorded.
    number_types: frozenset[str] = frozenset()

    def takes(self, number_type: str) -> bool:
        return not self.number_types or number_type in self.number_types


class PrefixRouter:
    """Longest destination-prefix match among the routes that take the message's number type;
    a route with no prefixes is a default. At one prefix, routes naming number types are
    asked before the one that names none."""

    def __init__(self, routes: Sequence[PrefixRoute]) -> None:
        self._by_prefix: dict[str, list[PrefixRoute]] = {}
        self._defaults: list[PrefixRoute] = []
        # Filtered routes first (in config order), then the unfiltered one.
        for route in sorted(routes, key=lambda r: not r.number_types):
            if not route.prefixes:
                self._defaults.append(route)
            for prefix in route.prefixes:
                self._by_prefix.setdefault(normalise_digits(prefix), []).append(route)
        self._lengths = sorted({len(p) for p in self._by_prefix}, reverse=True)
        # Plans are immutable: one per route, built once, not per message.
        self._plans = {id(r): RoutePlan(tuple(Attempt(r.channel, c) for c in r.connectors),
                                        r.name) for r in routes}

    def match(self, destination: str, number_type: str = "") -> PrefixRoute | None:
        digits = normalise_digits(destination)
        for length in self._lengths:
            if len(digits) < length:
                continue
            for route in self._by_prefix.get(digits[:length], ()):
                if not route.number_types or number_type in route.number_types:  # takes()
                    return route
        for route in self._defaults:
            if not route.number_types or number_type in route.number_types:
                return route
        return None

    def plan(self, message: Message, context: RoutingContext) -> RoutePlan | None:
        route = self.match(message.dest_addr, message.number_type)
        return None if route is None else self._plans[id(route)]


class RouterChain:
    """Ask each router in turn; the first plan wins."""

    def __init__(self, routers: Sequence[Router]) -> None:
        self.routers = tuple(routers)

    def plan(self, message: Message, context: RoutingContext) -> RoutePlan | None:
        for router in self.routers:
            plan = router.plan(message, context)
            if plan is not None and plan.attempts:
                return plan
        return None
