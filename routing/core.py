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


class PrefixRouter:
    """Longest destination-prefix match; a route with no prefixes is the default."""

    def __init__(self, routes: Sequence[PrefixRoute]) -> None:
        self._by_prefix: dict[str, PrefixRoute] = {}
        self._default: PrefixRoute | None = None
        for route in routes:
            if not route.prefixes:
                self._default = self._default or route
            for prefix in route.prefixes:
                self._by_prefix.setdefault(normalise_digits(prefix), route)
        self._lengths = sorted({len(p) for p in self._by_prefix}, reverse=True)
        # Plans are immutable: one per route, built once, not per message.
        self._plans = {id(r): RoutePlan(tuple(Attempt(r.channel, c) for c in r.connectors),
                                        r.name) for r in routes}

    def match(self, destination: str) -> PrefixRoute | None:
        digits = normalise_digits(destination)
        for length in self._lengths:
            route = self._by_prefix.get(digits[:length]) if len(digits) >= length else None
            if route is not None:
                return route
        return self._default

    def plan(self, message: Message, context: RoutingContext) -> RoutePlan | None:
        route = self.match(message.dest_addr)
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
