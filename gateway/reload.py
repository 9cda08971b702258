"""Configuration reload (SIGHUP, `systemctl reload`): read the config file again and apply,
while running, what can change without a restart: accounts, routes, routers, rules, retry,
validity and the connectors (SMSCs added bind, removed ones drain, unchanged ones keep their
binds; RCS agents and voice providers are added and replaced). A config that does not load or
cannot be applied is refused with a logged error, the running one kept whole.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from typing import TYPE_CHECKING

import structlog
import trio

from gateway import lifecycle, metrics, sdnotify, shared_config
from gateway.config import ConfigError, GatewayConfig, connectors_by_kind
from gateway.routing_setup import Routing, build_routing, carry_over, export_breakers
from gateway.server import UPSTREAM_BIND_MODES, TokenBucket, account_state
from gateway.store import StoreError
from gateway.webhooks import endpoints, mo_by_webhook
from routing.rcs import RcsChannel
from routing.tts import VoiceChannel
from smpp.tls import TlsFileError

if TYPE_CHECKING:
    from gateway.daemon import Running
    from routing.sms import SmsChannel
    from routing.smsc import SmscConnector
    from smpp.connection import Connection

log = structlog.get_logger("gateway.reload")

# Sections that are read at start only: a reload keeps the running ones and says so.
RESTART_ONLY = ("node", "log_level", "listeners", "store", "http", "admin", "simulator")
UNBIND_TIMEOUT = 2.0  # seconds an upstream session of a removed account has to unbind


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    REFUSED = "refused"


def _notify_reloading() -> None:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the configuration")


def _refused(source: object, detail: str) -> Outcome:
    log.error("config.reload_refused", file=str(source), detail=detail,
              action="the running configuration is kept")
    metrics.child(metrics.CONFIG_RELOADS, Outcome.REFUSED.value).inc()
    metrics.CONFIG_RELOAD_OK.set(0)
    return Outcome.REFUSED


def effective(running: GatewayConfig, new: GatewayConfig, *, quiet: bool = False
              ) -> GatewayConfig:
    """The configuration a reload applies: the new file, with the restart-only sections kept
    as they run (each difference is logged as needing a restart, unless ``quiet``)."""
    kept = {name: getattr(running, name) for name in RESTART_ONLY}
    for name, value in kept.items():
        if getattr(new, name) != value and not quiet:
            log.warning("config.reload_needs_restart", section=name,
                        detail=f"the change to {name!r} takes effect at the next restart")
    return dataclasses.replace(new, **kept)


def check(config: GatewayConfig) -> str | None:
    """What makes the effective config unusable (routes, routers or sender limits naming a
    connector that is not running), or None."""
    running = connectors_by_kind(config)
    named = [(f"route {route.name!r}", "sms", name) for route in config.routes
             for name in route.smscs]
    named += [(f"router {router.name!r}", kind, name) for router in config.routers
              for kind, name in router.channels]
    named += [(f"sender_limit {limit.sender!r}", "sms", limit.connector)
              for limit in config.sender_limits if limit.connector]
    for who, kind, name in named:
        if name not in running[kind]:
            return (f"{who} names {kind} connector {name!r}, which is not running: adding an "
                    "RCS or voice connector needs a restart")
    return None


@dataclasses.dataclass
class SmscChanges:
    """What a reload does to the SMSC connectors: `started` are built (not running yet) for
    the [[smsc]] added or changed; `retired` names the running ones removed or changed."""

    started: dict[str, tuple[SmscConnector, SmsChannel]]
    retired: list[str]

    def __bool__(self) -> bool:
        return bool(self.started or self.retired)


@dataclasses.dataclass
class HttpChanges:
    """What a reload does to the RCS agents and voice connectors: the channels `started` (built
    for the [[rcs]] / [[voice]] added or changed, by name) and the names `retired`."""

    rcs: dict[str, RcsChannel]
    voice: dict[str, VoiceChannel]
    retired: list[str]


def _http_changes(running: Running, new: GatewayConfig) -> HttpChanges:
    """Build the channels of the [[rcs]] and [[voice]] added or changed (any key differs); a
    credentials file that cannot be read any more refuses the reload (ConfigError)."""
    from gateway.daemon import rcs_channel, voice_channel  # the daemon imports this module

    old = running.config
    changes = HttpChanges({}, {}, [])
    if running.http is None or running.nursery is None:
        return changes
    for name, agent in new.rcs.items():
        if old.rcs.get(name) != agent:
            try:
                changes.rcs[name] = rcs_channel(agent, running.http, running.nursery)
            except ValueError as exc:
                key = f'rcs "{name}".credentials_file'
                raise ConfigError(f"{new.source}: {key}: {exc}", file=str(new.source),
                                  key=key) from None
    for name, settings in new.voice.items():
        if old.voice.get(name) != settings:
            changes.voice[name] = voice_channel(settings, running.http, running.nursery,
                                                lambda: running.config.accounts)
    changes.retired = [name for name, cfg in old.rcs.items() if new.rcs.get(name) != cfg]
    changes.retired += [name for name, v in old.voice.items() if new.voice.get(name) != v]
    return changes


def _apply_http(running: Running, new: GatewayConfig, changes: HttpChanges) -> None:
    """Agents and voice connectors removed or changed leave the dispatcher (no new attempt;
    a timed-out one is still revoked through them) and take no more sends; their providers'
    late reports are still taken (RBM events by agent id, voice callbacks by name) until a
    connector of that id or name replaces them. Those added or changed join the dispatcher."""
    for name in changes.retired:
        running.dispatcher.remove_channel(name)
        channel = running.dispatcher.retired(name)
        if isinstance(channel, RcsChannel | VoiceChannel):
            channel.close()
        log.info("config.connector_retired", connector=name)
    for name, rcs in changes.rcs.items():
        running.dispatcher.add_channel(rcs)
        log.info("config.connector_started", connector=name, channel="rcs")
    for name, voice in changes.voice.items():
        running.dispatcher.add_channel(voice)
        log.info("config.connector_started", connector=name, channel="tts")
    events = running.rcs_events
    if events is not None:
        agents = dict(events.channels)  # removed agents stay: their late events are taken
        tokens = dict(events.push_tokens)
        for agent in new.rcs.values():
            if agent.name in changes.rcs:
                agents[agent.agent_id] = changes.rcs[agent.name]
                tokens[agent.agent_id] = agent.push_token
        events.channels, events.push_tokens = agents, {a: t for a, t in tokens.items() if t}
    status = running.voice_status
    if status is not None:
        status.channels = {**status.channels, **changes.voice}


def _smsc_changes(running: Running, new: GatewayConfig) -> SmscChanges:
    """Build the connectors of the [[smsc]] added or changed (any field differs): a
    ConfigError when one's TLS files cannot be used. Unchanged ones are left alone."""
    from gateway.daemon import sms_connector  # the daemon imports this module

    old = running.config.smscs
    assert running.inbound is not None
    started = {}
    for name, cfg in new.smscs.items():
        if old.get(name) == cfg:
            continue
        try:
            started[name] = sms_connector(cfg, running.inbound)
        except TlsFileError as exc:  # readable when the file was checked, not any more
            key = f'smsc "{name}".{exc.key}'
            raise ConfigError(f"{new.source}: {key}: expected {exc.expected}, got {exc.got}",
                              file=str(new.source), key=key) from None
    retired = [name for name, cfg in old.items() if new.smscs.get(name) != cfg]
    return SmscChanges(started, retired)


async def reload(running: Running) -> Outcome:
    """Reload `running.config.source` (with the database's shared configuration, on a node
    that follows it: gateway/shared_config.py) and apply it; see the module docstring. One
    reload at a time."""
    async with running.reload_lock:
        return await _reload(running)


async def _reload(running: Running) -> Outcome:
    old = running.config
    source = old.source
    _notify_reloading()
    log.info("config.reloading", file=str(source))
    try:
        try:
            new = effective(old, await shared_config.load(running.store, old))
            problem = check(new)
            if problem is not None:
                return _refused(source, problem)
            # Build everything that can fail before changing anything.
            routing = build_routing(new)
            if running.routing is not None:
                carry_over(running.routing, old, routing, new)
            smscs = _smsc_changes(running, new)
            http = _http_changes(running, new)
            screening = running.screening
            index = screening.reconfigure(new.rules) if screening is not None else None
        except (ConfigError, OSError) as exc:
            return _refused(source, str(exc))
        except StoreError as exc:  # the shared configuration could not be read
            return _refused(source, f"the store failed: {exc}")
        if index is not None:
            assert screening is not None
            for key, at, message_id in await running.store.fingerprints(
                    running.clock.now() - index.window):
                index.add(key, at, message_id)
        _apply_http(running, new, http)
        _apply(running, new, routing, smscs)
        if screening is not None:
            screening.apply()
        metrics.child(metrics.CONFIG_RELOADS, Outcome.APPLIED.value).inc()
        metrics.CONFIG_RELOAD_OK.set(1)
        log.info("config.reloaded", file=str(source), accounts=len(new.accounts),
                 routes=len(new.routes), shared_version=new.shared_version)
        return Outcome.APPLIED
    finally:
        sdnotify.notify("READY=1")


def _apply(running: Running, new: GatewayConfig, routing: Routing,
           smscs: SmscChanges) -> None:
    """Swap the new config in; nothing here fails on a config that passed `check`."""
    _apply_smscs(running, smscs)
    _apply_accounts(running, new)
    running.routing = routing
    running.dispatcher.routing = routing  # its router, breakers, limits, backoff, trackers
    export_breakers(routing, running.clock.now())
    running.dispatcher.retry = new.retry
    for server in running.servers:
        server.validity = new.validity
    running.reporter.configure(new.accounts)
    if running.webhooks is not None:
        running.webhooks.configure(endpoints(new.accounts.values()))
    from gateway.daemon import mo_owners  # the daemon imports this module

    assert running.inbound is not None
    running.inbound.configure(mo_owners(new), mo_by_webhook(new.accounts.values()),
                              new.validity)
    if running.http_api is not None:
        running.http_api.configure(new)
    if new.shared_version is not None:
        metrics.CONFIG_SHARED_VERSION.set(new.shared_version)
    running.config = new


def _apply_smscs(running: Running, changes: SmscChanges) -> None:
    """The connectors removed or changed leave the dispatcher first (no attempt goes to them
    from now on) and drain in the background (lifecycle.retire); those added or changed are
    started and join the dispatcher. Unchanged ones, and their binds, are not touched."""
    if not changes:
        return
    from gateway.daemon import export_connector_gauges  # the daemon imports this module

    nursery = running.nursery
    assert nursery is not None
    for name in changes.retired:
        parts = running.dispatcher.remove_channel(name)
        old = running.connectors.pop(name)
        running.draining.append(old)
        nursery.start_soon(lifecycle.retire, running, old, parts)
        log.info("config.smsc_retired", smsc=name, replaced=name in changes.started,
                 parts_open=len(parts))
    for name, (connector, channel) in changes.started.items():
        if running.store.shared:  # no bind before its slots are leased (gateway/slots.py)
            connector.set_slots(())
        running.connectors[name] = connector
        export_connector_gauges(connector)
        running.dispatcher.add_channel(channel)
        nursery.start_soon(connector.run)
        log.info("config.smsc_started", smsc=name)


def _apply_accounts(running: Running, new: GatewayConfig) -> None:
    """Accounts added can bind at once; changed ones take their new limits at once, and their
    sessions are closed if their credentials changed (they bind again with the new ones); the
    sessions of removed accounts are unbound. Unchanged accounts' sessions are not touched."""
    states = running.account_states
    for name, cfg in new.accounts.items():
        state = states.get(name)
        if state is None:
            states[name] = account_state(cfg)
            for mode in UPSTREAM_BIND_MODES.values():
                metrics.UPSTREAM_BINDS.labels(name, mode)
            log.info("config.account_added", account=name)
            continue
        if state.config == cfg:
            continue
        if cfg.throughput != state.config.throughput:
            state.bucket = TokenBucket(cfg.throughput)
        if cfg.password_hash != state.config.password_hash:
            _unbind(running, name, state.binds, "its password changed")
        state.config = cfg
        log.info("config.account_changed", account=name)
    for name in [n for n in states if n not in new.accounts]:
        state = states.pop(name)
        _unbind(running, name, state.binds, "it was removed from the configuration")
        log.info("config.account_removed", account=name)


def _unbind(running: Running, account: str, binds: set[Connection], why: str) -> None:
    if not binds:
        return
    log.warning("config.account_sessions_closed", account=account, sessions=len(binds),
                detail=f"the account's sessions are unbound: {why}")
    assert running.nursery is not None
    for conn in list(binds):
        running.nursery.start_soon(conn.unbind, UNBIND_TIMEOUT)


async def serve_reloads(running: Running, requests: trio.MemoryReceiveChannel[None], *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run one reload per request, one at a time; requests that arrive during a reload are
    coalesced into one more (the file is read after the last of them)."""
    task_status.started()
    async for _ in requests:
        while True:
            try:
                requests.receive_nowait()
            except trio.WouldBlock:
                break
        await reload(running)
