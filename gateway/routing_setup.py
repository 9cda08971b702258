"""Build the routing objects the daemon runs from its config: the router chain ([[router]],
with [[route]] as the "routes" router), the per-account channel policies, a circuit breaker
per connector (SMSC, RCS agent, voice provider), the sender limiter, the retry backoff and
the quality trackers to feed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import structlog

from gateway import metrics
from gateway.config import ConfigError, GatewayConfig, RouterConfig
from routing.backoff import Backoff
from routing.breaker import BreakerOptions, Breakers, BreakerState, OnChange
from routing.core import PrefixRoute, PrefixRouter, Router
from routing.limits import SenderLimit, SenderLimiter
from routing.quality import QualityOptions, QualityTracker
from routing.registry import RouterLoadError, load_router, resolve
from routing.routers import (
    ChannelPolicy,
    FilteredRouter,
    MessageFilter,
    PolicyChain,
    QualityRouter,
    StaticRouter,
    Target,
    WeightedRouter,
)

log = structlog.get_logger("gateway.routing")

STATIC_TYPES = frozenset({"account", "destination", "prefix", "country", "sender", "priority"})


@dataclass
class Routing:
    """What routing needs at run time. `router` is what the dispatcher asks for plans; the
    rest waits for the dispatcher to report to it: attempt outcomes to `breakers`, receipts to
    `observe` (the quality trackers), and to ask `limiter` and `backoff` before (re)trying."""

    router: PolicyChain
    breakers: Breakers
    limiter: SenderLimiter
    backoff: Backoff
    trackers: tuple[QualityTracker, ...] = ()

    def observe(self, connector: str, destination: str, delivered: bool,
                latency: float | None, now: float) -> None:
        """A receipt's outcome, for every quality router."""
        for tracker in self.trackers:
            tracker.observe(connector, destination, delivered, latency, now)


BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def _log_breaker(name: str, old: BreakerState, new: BreakerState, now: float) -> None:
    event = log.warning if new is BreakerState.OPEN else log.info
    event("routing.breaker", connector=name, old=old.value, new=new.value)
    metrics.child(metrics.BREAKER_STATE, name).set(BREAKER_GAUGE[new])


def export_breakers(routing: Routing, now: float) -> None:
    """Set the breaker gauge of every connector to its breaker's state (at start, and when a
    reload puts new breakers in); their changes set it from then on."""
    for name, breaker in routing.breakers.by_name.items():
        metrics.child(metrics.BREAKER_STATE, name).set(BREAKER_GAUGE[breaker.state(now)])


def _log_router_error(router: Router, exc: Exception) -> None:
    log.error("routing.router_failed", router=getattr(router, "name", type(router).__name__),
              error=f"{type(exc).__name__}: {exc}")


def prefix_router(config: GatewayConfig) -> PrefixRouter:
    """The [[route]] groups as one router (longest prefix, number types)."""
    return PrefixRouter([PrefixRoute(r.name, r.prefixes, r.smscs,
                                     number_types=frozenset(r.number_types))
                         for r in config.routes])


def _build(rc: RouterConfig, config: GatewayConfig, trackers: list[QualityTracker]) -> Router:
    match = MessageFilter(accounts=frozenset(rc.accounts), prefixes=rc.prefixes,
                          countries=frozenset(rc.countries),
                          number_types=frozenset(rc.number_types),
                          senders=frozenset(rc.senders))
    if rc.type == "routes":
        return prefix_router(config)
    if rc.type == "plugin":
        key = f'router "{rc.name}".plugin'
        try:
            resolve(rc.plugin)
            key = f'router "{rc.name}".options'
            plugin = load_router(rc.plugin, rc.options)
        except RouterLoadError as exc:
            raise ConfigError(f"{config.source}: {key}: {exc}", file=str(config.source),
                              key=key) from None
        return plugin if match.empty else FilteredRouter(plugin, match)
    targets = [Target(kind, connector, priority=rc.priorities.get(connector, 0),
                      weight=rc.weights.get(connector, 1.0)) for kind, connector in rc.channels]
    rng = random.Random(rc.seed) if rc.seed is not None else random.Random()
    if rc.type in STATIC_TYPES:
        return StaticRouter(rc.name, targets, match, rc.timeouts)
    if rc.type == "weighted":
        return WeightedRouter(rc.name, targets, match, rc.timeouts, rng)
    if rc.type == "quality":
        tracker = QualityTracker(QualityOptions(window=rc.window, floor=rc.floor,
                                                latency_target=rc.latency_target,
                                                group_by=rc.group_by))
        trackers.append(tracker)
        return QualityRouter(rc.name, targets, tracker, match, rc.timeouts, rng)
    raise AssertionError(f"router type {rc.type!r} has no builder")  # config refuses others


def build_routing(config: GatewayConfig, *, on_breaker_change: OnChange | None = None
                  ) -> Routing:
    """The routing of a loaded config. A plug-in router that refuses its options is a
    ConfigError naming the file and the router."""
    trackers: list[QualityTracker] = []
    routers = [_build(rc, config, trackers) for rc in config.routers]
    if config.routes and not any(rc.type == "routes" for rc in config.routers):
        routers.append(prefix_router(config))
    default = config.breaker
    breakers = Breakers(
        [*config.smscs, *config.rcs, *config.voice],  # [breaker] for all; [[smsc]] may override
        BreakerOptions(default.failures, default.cooldown, default.probes),
        {s.name: BreakerOptions(s.breaker.failures, s.breaker.cooldown, s.breaker.probes)
         for s in config.smscs.values() if s.breaker is not None},
        on_breaker_change or _log_breaker)
    policies = {a.system_id: ChannelPolicy(frozenset(a.channels), a.voice, a.rcs_wait)
                for a in config.accounts.values()}
    chain = PolicyChain(routers, policies, default=ChannelPolicy(),
                        breakers=breakers, on_error=_log_router_error,
                        rcs_senders={r.name: r.sms_sender for r in config.rcs.values()
                                     if r.sms_sender})
    limiter = SenderLimiter([SenderLimit(s.sender, s.rate, s.burst, s.connector or None)
                             for s in config.sender_limits])
    retry = config.retry
    backoff = Backoff(initial=retry.initial_delay, cap=retry.max_delay,
                      multiplier=retry.multiplier, jitter=retry.jitter)
    return Routing(chain, breakers, limiter, backoff, tuple(trackers))


def carry_over(old: Routing, old_config: GatewayConfig, new: Routing,
               new_config: GatewayConfig) -> None:
    """A reload's new routing keeps what the running one learnt where its settings did not
    change: breaker states (an open breaker stays open), sender-limit tokens, and the
    receipts a quality router of the same name measured."""
    new.breakers.adopt(old.breakers)
    new.limiter.adopt(old.limiter)
    before = {rc.name: i for i, rc in enumerate(
        rc for rc in old_config.routers if rc.type == "quality")}
    now_quality = [rc.name for rc in new_config.routers if rc.type == "quality"]
    for name, tracker in zip(now_quality, new.trackers, strict=True):
        if name in before:
            tracker.adopt(old.trackers[before[name]])
