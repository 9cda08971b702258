"""The built-in routers and the chain that asks them in turn under each account's policy.

A router takes the messages its filter matches (account, destination prefix, country, number
type, sender) and plans attempts over its targets: in a fixed priority order, shared by weight
among targets of equal priority, or by measured delivery quality. Connectors that are down go
last (kept, in case they come back). `PolicyChain` keeps the first plan that survives the
account's allowed channels.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import phonenumbers

from gateway.model import Message
from routing.breaker import Breakers
from routing.channel import RCS, SMS, TTS
from routing.core import Attempt, RoutePlan, Router, RoutingContext, normalise_digits
from routing.limits import sender_key
from routing.quality import QualityTracker

CHANNELS: tuple[str, ...] = (SMS, RCS, TTS)
PLAN_CACHE = 1024  # plans PolicyChain remembers as the account policies let them go


@functools.lru_cache(maxsize=8192)
def region_of(destination: str) -> str:
    """The ISO 3166 alpha-2 region of an E.164 destination ("" when unknown): the region
    phonenumbers gives the number, else the only region of its calling code."""
    digits = normalise_digits(destination)
    if not digits.isdigit():
        return ""
    try:
        number = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return ""
    region = phonenumbers.region_code_for_number(number)
    if region:
        return str(region)
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(number.country_code or 0, ())
    return str(regions[0]) if len(regions) == 1 and regions[0] != "001" else ""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a router may send: a channel kind through a named connector, its priority (lower
    goes first) and its weight among the targets of its priority."""

    channel: str
    connector: str
    priority: int = 0
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"target channel: expected one of {', '.join(CHANNELS)}, got "
                             f"{self.channel!r}")
        if not self.connector:
            raise ValueError("target connector: expected a connector name, got nothing")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"target weight: expected a number >= 0, got {self.weight!r}")


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """Which messages a router takes; an empty criterion takes any, all given must match.
    prefixes: E.164 digits the destination starts with; countries: ISO 3166 alpha-2 regions
    (Message.country when a rule recorded it, else the destination's region); number_types:
    Message.number_type as recorded by the rules ("mobile", "fixed_line", ...; a message with
    none recorded matches no type); senders: source addresses (numbers without '+')."""

    accounts: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    countries: frozenset[str] = frozenset()
    number_types: frozenset[str] = frozenset()
    senders: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for prefix in self.prefixes:
            if not normalise_digits(prefix).isdigit():
                raise ValueError(f"filter prefixes: expected E.164 digits, got {prefix!r}")
        for country in self.countries:
            if country not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"filter countries: expected an ISO 3166 alpha-2 region "
                                 f"phonenumbers knows (e.g. \"FR\"), got {country!r}")
        object.__setattr__(self, "prefixes", tuple(normalise_digits(p) for p in self.prefixes))
        object.__setattr__(self, "senders", frozenset(sender_key(s) for s in self.senders))

    @property
    def empty(self) -> bool:
        return not (self.accounts or self.prefixes or self.countries or self.number_types
                    or self.senders)

    def matches(self, message: Message) -> bool:
        if self.accounts and message.account not in self.accounts:
            return False
        if self.prefixes and not normalise_digits(message.dest_addr).startswith(self.prefixes):
            return False
        if self.number_types and message.number_type not in self.number_types:
            return False
        if self.senders and sender_key(message.source_addr) not in self.senders:
            return False
        if self.countries:
            country = message.country or region_of(message.dest_addr)
            if country not in self.countries:
                return False
        return True


ANY = MessageFilter()


def up_first(attempts: tuple[Attempt, ...], is_up: Callable[[str], bool]) -> tuple[Attempt, ...]:
    """The attempts whose connector is up first, in their order, then those that are down (in
    case they come back before the message gives up). The same tuple when nothing moves."""
    up = [is_up(a.connector) for a in attempts]
    if all(up) or not any(up):
        return attempts
    return (tuple(a for a, u in zip(attempts, up, strict=True) if u)
            + tuple(a for a, u in zip(attempts, up, strict=True) if not u))


def weighted_order(items: Sequence[tuple[float, Attempt]], rng: random.Random
                   ) -> list[Attempt]:
    """A random order where an item comes first with a probability proportional to its
    weight, then the next among the rest, and so on (weight 0: after all others)."""
    keyed = []
    for weight, attempt in items:
        key = -math.log(1.0 - rng.random()) / weight if weight > 0 else math.inf
        keyed.append((key, attempt))
    keyed.sort(key=lambda ka: ka[0])
    return [a for _k, a in keyed]


class _TargetRouter:
    """A router over a fixed set of targets for the messages its filter takes."""

    def __init__(self, name: str, targets: Sequence[Target], match: MessageFilter = ANY,
                 timeouts: Mapping[str, float] | None = None) -> None:
        if not targets:
            raise ValueError(f"router {name}: expected at least one target")
        timeouts = dict(timeouts or {})
        for channel, seconds in timeouts.items():
            if channel not in CHANNELS:
                raise ValueError(f"router {name} timeouts: expected channels among "
                                 f"{', '.join(CHANNELS)}, got {channel!r}")
            if not (math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"router {name} timeouts: expected a positive duration for "
                                 f"{channel}, got {seconds!r}")
        seen = set()
        for t in targets:
            if (t.channel, t.connector) in seen:
                raise ValueError(f"router {name}: target {t.channel}:{t.connector} listed twice")
            seen.add((t.channel, t.connector))
        self.name = name
        self.match = match
        self.targets = tuple(targets)
        self.attempts = {t: Attempt(t.channel, t.connector, timeouts.get(t.channel))
                         for t in self.targets}
        # the targets by priority, lowest first; each tier in the listed order
        self.tiers = [tuple(t for t in self.targets if t.priority == p)
                      for p in sorted({t.priority for t in self.targets})]

    def order(self, message: Message, context: RoutingContext) -> tuple[Attempt, ...]:
        raise NotImplementedError

    def plan(self, message: Message, context: RoutingContext) -> RoutePlan | None:
        if not self.match.matches(message):
            return None
        attempts = self.order(message, context)
        return RoutePlan(up_first(attempts, context.is_up), self.name)


class StaticRouter(_TargetRouter):
    """A fixed priority list: targets by priority (lower first), then as listed. Serves the
    account, destination, prefix, country, sender and priority router types."""

    def __init__(self, name: str, targets: Sequence[Target], match: MessageFilter = ANY,
                 timeouts: Mapping[str, float] | None = None) -> None:
        super().__init__(name, targets, match, timeouts)
        self._attempts = tuple(self.attempts[t] for tier in self.tiers for t in tier)
        self._plan = RoutePlan(self._attempts, name)

    def order(self, message: Message, context: RoutingContext) -> tuple[Attempt, ...]:
        return self._attempts

    def plan(self, message: Message, context: RoutingContext) -> RoutePlan | None:
        if not self.match.matches(message):
            return None
        attempts = up_first(self._attempts, context.is_up)
        return self._plan if attempts is self._attempts else RoutePlan(attempts, self.name)


class WeightedRouter(_TargetRouter):
    """Load sharing: within each priority, a random order drawn by weight (a target of weight 3
    comes first three times as often as one of weight 1); lower priorities first."""

    def __init__(self, name: str, targets: Sequence[Target], match: MessageFilter = ANY,
                 timeouts: Mapping[str, float] | None = None,
                 rng: random.Random | None = None) -> None:
        super().__init__(name, targets, match, timeouts)
        for tier in self.tiers:
            if not any(t.weight > 0 for t in tier):
                raise ValueError(f"router {name} weights: expected a weight > 0 for at least "
                                 f"one target of priority {tier[0].priority}")
        self.rng = rng or random.Random()

    def order(self, message: Message, context: RoutingContext) -> tuple[Attempt, ...]:
        ordered: list[Attempt] = []
        for tier in self.tiers:
            if len(tier) == 1:
                ordered.append(self.attempts[tier[0]])
            else:
                ordered += weighted_order([(t.weight, self.attempts[t]) for t in tier],
                                          self.rng)
        return tuple(ordered)


class QualityRouter(_TargetRouter):
    """Traffic by measured quality: within each priority, a random order drawn by weight times
    the connector's quality score for the destination (QualityTracker), so a degraded connector
    gets less traffic (never none: the score has a floor) and more again as it recovers."""

    def __init__(self, name: str, targets: Sequence[Target], tracker: QualityTracker,
                 match: MessageFilter = ANY, timeouts: Mapping[str, float] | None = None,
                 rng: random.Random | None = None) -> None:
        super().__init__(name, targets, match, timeouts)
        self.tracker = tracker
        self.rng = rng or random.Random()

    def order(self, message: Message, context: RoutingContext) -> tuple[Attempt, ...]:
        ordered: list[Attempt] = []
        for tier in self.tiers:
            scored = [(t.weight * self.tracker.score(t.connector, message.dest_addr, context.now),
                       self.attempts[t]) for t in tier]
            ordered += weighted_order(scored, self.rng)
        return tuple(ordered)


class FilteredRouter:
    """Any router, asked only for the messages a filter takes (e.g. a plug-in router)."""

    def __init__(self, router: Router, match: MessageFilter) -> None:
        self.router = router
        self.match = match

    def plan(self, message: Message, context: RoutingContext) -> RoutePlan | None:
        return self.router.plan(message, context) if self.match.matches(message) else None


@dataclass(frozen=True, slots=True)
class ChannelPolicy:
    """The channels an account's messages may take: `channels` (e.g. {"rcs", "sms"}); TTS
    only when `voice` is true."""

    channels: frozenset[str] = frozenset({SMS})
    voice: bool = False
    # How long an RCS attempt waits for its outcome (delivered) before it is revoked and the
    # plan goes on, when the router set no timeout and another attempt follows it.
    rcs_wait: float | None = None
    allowed: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        wrong = sorted(set(self.channels) - {SMS, RCS})
        if wrong:
            raise ValueError(f"policy channels: expected channels among sms, rcs (voice, the "
                             f"tts channel, is allowed by voice = true), got {wrong[0]!r}")
        object.__setattr__(self, "allowed",
                           frozenset(self.channels) | ({TTS} if self.voice else set()))

    def allows(self, channel: str) -> bool:
        return channel in self.allowed


RouterError = Callable[[Router, Exception], None]


class PolicyChain:
    """Ask each router in turn. A plan's attempts are filtered by the account's policy (its
    allowed channels); the first plan with an attempt left wins, connectors that are down (or
    whose circuit breaker refuses attempts now) moved last. No plan: None (the
    dispatcher refuses the message as having no route).

    `policies` by account; `default` for accounts without one (None: every channel allowed).
    A router that raises is skipped when `on_error` is given (it is told), else the error
    propagates."""

    def __init__(self, routers: Iterable[Router],
                 policies: Mapping[str, ChannelPolicy] | None = None,
                 default: ChannelPolicy | None = None,
                 breakers: Breakers | None = None,
                 on_error: RouterError | None = None,
                 rcs_senders: Mapping[str, str] | None = None) -> None:
        self.routers = tuple(routers)
        self.policies = dict(policies or {})
        self.default = default
        self.breakers = breakers
        self.on_error = on_error
        # RCS connector -> the SMS sender mapped to its agent: the SMS attempts of a plan that
        # tries that agent first go out under it.
        self.rcs_senders = dict(rcs_senders or {})
        # (id(plan), id(policy)) -> (plan, policy, the plan as the policy lets it go)
        self._plans: dict[tuple[int, int], tuple[RoutePlan, ChannelPolicy | None,
                                                 RoutePlan | None]] = {}

    def plan(self, message: Message, context: RoutingContext) -> RoutePlan | None:
        breakers = self.breakers
        guarded = breakers is not None and bool(breakers.not_closed)
        if guarded:  # else nothing to ask the breakers
            assert breakers is not None
            now, is_up = context.now, context.is_up
            context = RoutingContext(
                now, lambda name: is_up(name) and breakers.available(name, now))
        policy = self.policies.get(message.account, self.default)
        for router in self.routers:
            try:
                plan = router.plan(message, context)
            except Exception as exc:
                if self.on_error is None:
                    raise
                self.on_error(router, exc)
                continue
            if plan is None:
                continue
            allowed = self._allowed(plan, policy)
            if allowed is None:
                continue
            attempts = allowed.attempts
            # One attempt cannot be reordered: is_up is not asked for it, unless breakers are
            # (asking a breaker moves it from open to half-open once its cool-down is over).
            if len(attempts) > 1 or guarded:
                ordered = up_first(attempts, context.is_up)
                if ordered is not attempts:
                    return plan if ordered == plan.attempts else RoutePlan(ordered, plan.route)
            return allowed
        return None

    def _allowed(self, plan: RoutePlan, policy: ChannelPolicy | None) -> RoutePlan | None:
        """The plan as the policy lets it go (its channels only, the RCS fallback's wait and
        sender), the same plan when nothing changes, None when no attempt is left.

        Remembered per (plan, policy), both immutable: a static router gives every message
        the same plan object, so this is worked out once, not per message (rcs_senders is
        read when a plan is first seen). At most PLAN_CACHE entries (routers that draw a new
        plan per message, weighted or by quality, only cycle through them)."""
        key = (id(plan), id(policy))
        hit = self._plans.get(key)
        if hit is not None and hit[0] is plan and hit[1] is policy:
            return hit[2]
        attempts = plan.attempts
        if policy is not None:
            allowed = policy.allowed
            for attempt in attempts:
                if attempt.channel not in allowed:
                    attempts = tuple(a for a in attempts if a.channel in allowed)
                    break
        result: RoutePlan | None = None
        if attempts:
            if any(a.channel == RCS for a in attempts):
                attempts = self._rcs_fallback(attempts, policy)
            result = plan if attempts == plan.attempts else RoutePlan(attempts, plan.route)
        if len(self._plans) >= PLAN_CACHE:
            self._plans.clear()
        self._plans[key] = (plan, policy, result)
        return result

    def _rcs_fallback(self, attempts: tuple[Attempt, ...], policy: ChannelPolicy | None
                      ) -> tuple[Attempt, ...]:
        """A plan trying RCS first: the account's wait on the RCS attempts that have no
        timeout and an attempt after them, and the agent's SMS sender on the SMS attempts."""
        first = next(a for a in attempts if a.channel == RCS)
        sender = self.rcs_senders.get(first.connector, "")
        wait = policy.rcs_wait if policy is not None else None
        out = []
        for i, attempt in enumerate(attempts):
            if attempt.channel == RCS and attempt.timeout is None and wait is not None \
                    and i + 1 < len(attempts):
                attempt = dataclasses.replace(attempt, timeout=wait)
            elif attempt.channel == SMS and sender and not attempt.sender:
                attempt = dataclasses.replace(attempt, sender=sender)
            out.append(attempt)
        return tuple(out)
